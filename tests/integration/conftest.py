"""The real daemon, started as `supportd run` on free loopback ports, and ways to talk to it."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import smtplib
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(condition: Callable[[], T], *, timeout: float = 15.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


CONFIG = """
[support]
addresses = ["support@example.com"]
name = "Example Support"
subject_prefix = "Support"
default_group = "tier1"
auto_mail_limit = 3
hmac_key_file = "hmac.key"
trusted_authserv_ids = ["mx.example.com"]

[smtp]
listen = "127.0.0.1:{port}"
{lmtp}
max_message_size = {max_size}

[store]
path = "supportd.sqlite3"

[outbound]
transport = "maildir"
maildir = "outbox"
templates = "{templates}"

[[groups]]
name = "tier1"

[[groups]]
name = "experts"

[[agents]]
email = "alice@example.com"
name = "Alice"
groups = ["tier1"]

[[agents]]
email = "bob@example.com"
name = "Bob"
groups = ["experts"]

[[accounts]]
name = "Customer Corp"
domains = ["customer.example"]
"""


@dataclass
class Daemon:
    folder: Path
    port: int
    lmtp_port: int | None = None
    templates: Path = REPO / "templates"
    max_size: int = 1_000_000
    process: subprocess.Popen[bytes] | None = None
    seen_outbox: set[str] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)  # e.g. NOTIFY_SOCKET, WATCHDOG_USEC
    # Text replacements on the config above, in order: (old, new), each old present once.
    edits: tuple[tuple[str, str], ...] = ()

    @property
    def config_path(self) -> Path:
        return self.folder / "supportd.toml"

    def write_config(self) -> None:
        lmtp = f'lmtp_listen = "127.0.0.1:{self.lmtp_port}"' if self.lmtp_port else ""
        text = CONFIG.format(
            port=self.port, lmtp=lmtp, templates=self.templates, max_size=self.max_size)
        for old, new in self.edits:
            assert text.count(old) == 1, f"config edit {old!r} does not match once"
            text = text.replace(old, new)
        self.config_path.write_text(text)

    def start(self) -> None:
        self.write_config()
        log = open(self.folder / "supportd.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supportd.cli", "--config", str(self.config_path), "run"],
            stdout=log, stderr=log, cwd=self.folder,
            env={**os.environ, "PYTHONPATH": str(REPO / "daemon"), **self.env},
        )
        log.close()
        try:
            wait_for(self._accepting, what=f"supportd to listen on {self.port}")
        except BaseException:
            self.stop()  # a daemon that never came up must not outlive the test
            raise

    def _accepting(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"supportd exited with {self.process.returncode}:\n{self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()  # deaf to SIGTERM: the test fails, the daemon still goes
                self.process.wait()
                raise

    def log(self) -> str:
        path = self.folder / "supportd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supportd.cli", "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=60, cwd=self.folder,
            env={**os.environ, "PYTHONPATH": str(REPO / "daemon")},
        )

    # -- talking to it -----------------------------------------------------------------

    def send(self, msg: EmailMessage | bytes, *, mail_from: str | None = None,
             to: list[str] | None = None) -> dict[str, tuple[int, bytes]]:
        raw = msg if isinstance(msg, bytes) else msg.as_bytes(policy=email.policy.SMTP)
        if isinstance(msg, EmailMessage):
            mail_from = mail_from if mail_from is not None else msg["From"].addresses[0].addr_spec
            to = to or [a.addr_spec for a in msg["To"].addresses]
        assert mail_from is not None and to
        with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as client:
            return client.sendmail(mail_from, to, raw)

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        db = sqlite3.connect(self.folder / "supportd.sqlite3", timeout=10)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def inbox_settled(self) -> bool:
        return not self.query("SELECT 1 FROM inbox WHERE state = 'new'")

    def ticket(self, ticket_id: int) -> sqlite3.Row:
        return self.query("SELECT * FROM tickets WHERE id = ?", ticket_id)[0]

    def events(self, ticket_id: int) -> list[str]:
        return [f"{r['kind']}: {r['detail']}" for r in
                self.query("SELECT * FROM events WHERE ticket_id = ? ORDER BY id", ticket_id)]

    def outbox_files(self) -> dict[str, EmailMessage]:
        folder = self.folder / "outbox" / "new"
        if not folder.is_dir():
            return {}
        return {p.name: _read(p) for p in sorted(folder.iterdir())}

    def new_mail(self, count: int, *, timeout: float = 15.0) -> list[EmailMessage]:
        """Wait until `count` more mails are in the outbox Maildir; return those, in order."""
        def fresh() -> dict[str, EmailMessage] | None:
            mails = {k: v for k, v in self.outbox_files().items() if k not in self.seen_outbox}
            return mails if len(mails) >= count else None
        mails = wait_for(fresh, timeout=timeout, what=f"{count} outbound mail(s)")
        self.seen_outbox.update(mails)
        assert len(mails) == count, [m["Subject"] for m in mails.values()]
        return list(mails.values())

    def no_new_mail(self) -> list[EmailMessage]:
        """Mails sent since the last look, once the inbox is processed and the outbox drained."""
        wait_for(self.inbox_settled, what="inbox processed")
        wait_for(lambda: not self.query("SELECT 1 FROM outbox WHERE state = 'queued'"),
                 what="outbox drained")
        return [v for k, v in self.outbox_files().items() if k not in self.seen_outbox]


def _read(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body_text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def mail(*, sender: str = "carol@customer.example", to: str = "support@example.com",
         subject: str = "Our app is down", body: str = "Hello, our app returns 502 since noon.",
         message_id: str | None = None, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain=sender.split("@")[1])
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def reply_to(original: EmailMessage, *, sender: str, body: str, **headers: str) -> EmailMessage:
    """A mail client's reply: to the Reply-To, threaded by In-Reply-To/References."""
    msg = mail(sender=sender, to=str(original["Reply-To"]), subject="Re: " + original["Subject"],
               body=body, **headers)
    msg["In-Reply-To"] = original["Message-ID"]
    msg["References"] = original["Message-ID"]
    return msg


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, free_port())
    d.start()
    yield d
    d.stop()


@pytest.fixture
def copied_templates(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    shutil.copytree(REPO / "templates", folder)
    return folder


def worker_pid(daemon: Daemon) -> int:
    """The daemon's one child process, found through /proc (the worker)."""
    assert daemon.process is not None
    children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children")
    pids = wait_for(lambda: children.read_text().split(), what="the worker process")
    assert len(pids) == 1, pids
    return int(pids[0])
