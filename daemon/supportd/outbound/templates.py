"""Templates: jinja2 mail templates, plain text and an autoescaped HTML alternative."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2


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
        loader = jinja2.FileSystemLoader(folder)
        self._text = jinja2.Environment(
            loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
            keep_trailing_newline=True, auto_reload=False,
        )
        self._html = jinja2.Environment(
            loader=loader, undefined=jinja2.StrictUndefined, autoescape=True, auto_reload=False,
        )

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
                try:
                    env.get_template(f"{kind}.{suffix}.j2")
                except jinja2.TemplateError as e:
                    problems.append(f"{kind}.{suffix}.j2: {e}")
        return problems
