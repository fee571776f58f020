"""Templates: a template that is missing or broken stops the start as a config error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from supportd.cli import main
from supportd.config import ConfigInvalid, load_config
from supportd.outbound.templates import load_renderer

REPO = Path(__file__).resolve().parents[2]


def site(tmp_path: Path, *, without: str | None = None, broken: str | None = None) -> Path:
    """The shipped config with a copy of the shipped templates, one removed or broken."""
    folder = tmp_path / "templates"
    shutil.copytree(REPO / "templates", folder)
    if without:
        (folder / without).unlink()
    if broken:
        (folder / broken).write_text("{% if %}\n")
    path = tmp_path / "supportd.toml"
    path.write_text((REPO / "supportd.toml").read_text().replace(
        'templates = "templates"', f'templates = "{folder}"'))
    load_config(path)  # makes the HMAC key, as the first `supportd run` does
    return path


def test_a_missing_template_names_file_key_and_what_is_missing(tmp_path: Path) -> None:
    path = site(tmp_path, without="relay.html.j2")
    with pytest.raises(ConfigInvalid) as invalid:
        load_renderer(load_config(path))
    assert [str(e) for e in invalid.value.errors] == [
        f"{path}: outbound.templates: relay.html.j2: not found in {tmp_path / 'templates'}"]


def test_check_config_reports_a_broken_template_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = site(tmp_path, broken="new_ticket.txt.j2")
    assert main(["check-config", "--config", str(path)]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert error.startswith(f"{path}: outbound.templates: new_ticket.txt.j2: ")
    assert "Expected an expression" in error
