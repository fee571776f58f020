"""Templates: jinja2 mail templates, plain text and an autoescaped HTML alternative."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from supportd.config import Config, ConfigError, ConfigInvalid

# Every mail supportd sends is one of these; each needs <kind>.txt.j2 and <kind>.html.j2.
TEMPLATE_KINDS = ("acknowledgement", "new_ticket", "customer_reply", "relay", "status_changed",
                  "command_error")


@dataclass(frozen=True)
class Rendered:
    text: str
    html: str


class Renderer:
    """Renders `<kind>.txt.j2` and `<kind>.html.j2` from one folder.

    StrictUndefined: a template naming a value the code does not give fails loudly in tests
    instead of mailing a customer a blank. HTML is autoescaped: customer text is never markup.
    Templates are read once (no auto_reload, which costs a stat per render): a new Renderer,
    made on SIGHUP, reads them again.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        loader = jinja2.FileSystemLoader(folder)
        self._text = jinja2.Environment(
            loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
            keep_trailing_newline=True, auto_reload=False,
        )
        self._html = jinja2.Environment(
            loader=loader, undefined=jinja2.StrictUndefined, autoescape=True, auto_reload=False,
        )

    def fresh(self) -> Renderer:
        """The same folder's templates, read again."""
        return Renderer(self.folder)

    def render(self, kind: str, context: dict[str, Any]) -> Rendered:
        return Rendered(
            text=self._text.get_template(f"{kind}.txt.j2").render(context),
            html=self._html.get_template(f"{kind}.html.j2").render(context),
        )

    def check(self, kinds: tuple[str, ...]) -> list[str]:
        """Problems loading the templates of `kinds`, for check-config and start-up."""
        problems = []
        for kind in kinds:
            for env, suffix in ((self._text, "txt"), (self._html, "html")):
                name = f"{kind}.{suffix}.j2"
                try:
                    env.get_template(name)
                except jinja2.TemplateNotFound:
                    problems.append(f"{name}: not found in {self.folder}")
                except jinja2.TemplateError as e:
                    problems.append(f"{name}: {e}")
        return problems


def load_renderer(config: Config) -> Renderer:
    """The templates of `config`, checked; a missing or broken one is a config error."""
    renderer = Renderer(config.outbound.templates)
    problems = renderer.check(TEMPLATE_KINDS)
    if problems:
        raise ConfigInvalid([ConfigError(str(config.path), "outbound.templates", problem)
                             for problem in problems])
    return renderer
