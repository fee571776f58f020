"""Reliability fixtures: the real daemon with other outbound or store settings, a smarthost."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Daemon, free_port, wait_for

HERE = Path(__file__).resolve().parent


@dataclass
class ConfiguredDaemon(Daemon):
    """The integration-test daemon with a smarthost and/or a store file elsewhere."""

    smarthost_port: int | None = None
    store_file: str = "supportd.sqlite3"
    auto_mail_limit: int = 3

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        text = text.replace('path = "supportd.sqlite3"', f'path = "{self.store_file}"')
        text = text.replace("auto_mail_limit = 3", f"auto_mail_limit = {self.auto_mail_limit}")
        if self.smarthost_port is not None:
            text = text.replace('transport = "maildir"', 'transport = "smtp"').replace(
                f'templates = "{self.templates}"\n',
                f'templates = "{self.templates}"\n\n[outbound.smtp]\nhost = "127.0.0.1"\n'
                f"port = {self.smarthost_port}\nstarttls = false\n")
        self.config_path.write_text(text)

    def query(self, sql: str, *args: Any) -> Any:
        db = sqlite3.connect(self.folder / self.store_file, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def write(self, sql: str, *args: Any) -> None:
        with sqlite3.connect(self.folder / self.store_file, timeout=10) as db:
            db.execute(sql, args)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut or the OOM killer."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


class Smarthost:
    def __init__(self, folder: Path, *extra: str) -> None:
        self.port = free_port()
        self.record = folder / f"smarthost-{self.port}.jsonl"
        self.record.touch()
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "smarthost.py"), "--port", str(self.port),
             "--record", str(self.record), *extra],
            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
        try:
            assert self.process.stdout is not None
            assert self.process.stdout.readline().strip() == b"ready"
        except BaseException:
            self.stop()  # one that did not come up ready must not outlive the test
            raise

    def received(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def smarthost_factory(tmp_path: Path) -> Iterator[Any]:
    with contextlib.ExitStack() as started:  # each one stopped, even if another's stop fails

        def start(*extra: str) -> Smarthost:
            host = Smarthost(tmp_path, *extra)
            started.callback(host.stop)
            return host

        yield start


__all__ = ["ConfiguredDaemon", "Smarthost", "free_port", "wait_for"]
