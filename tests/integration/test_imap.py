"""IMAP intake against a real Dovecot: IDLE, polling, crashes, cuts, UIDVALIDITY, backlogs."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, free_port, mail, wait_for
from tests.integration.dovecot import CAPABILITIES, PASSWORD, USER, Dovecot

IMAP = """
[[imap]]
name = "main"
host = "{host}"
port = {port}
tls = "{tls}"
user = "{user}"
{credential}
after = "{after}"
move_to = "Done"
poll_seconds = 1
batch_size = {batch_size}
{extra}
"""


@dataclass
class ImapDaemon(Daemon):
    """The real daemon with one [[imap]] section appended to the test config."""

    imap: dict[str, object] = field(default_factory=dict)

    def write_config(self) -> None:
        super().write_config()
        (self.folder / "imap.password").write_text(PASSWORD + "\n")
        settings = {"host": "127.0.0.1", "tls": "none", "user": USER, "after": "move",
                    "credential": 'password_file = "imap.password"', "batch_size": 50,
                    "extra": "", **self.imap}
        with self.config_path.open("a") as config:
            config.write(IMAP.format(**settings))

    def tickets(self) -> int:
        return int(self.query("SELECT count(*) FROM tickets")[0][0])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)


def raw_mail(n: int, *, size: int = 0) -> bytes:
    return mail(subject=f"Problem {n}", body=f"Mail number {n}.\n" + "x" * size).as_bytes()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot()
    server.start()
    yield server
    server.stop()


def start_daemon(tmp_path: Path, **imap: object) -> ImapDaemon:
    d = ImapDaemon(tmp_path, free_port(), imap=imap)
    d.start()
    return d


@pytest.fixture
def daemon_for(tmp_path: Path) -> Iterator[list[ImapDaemon]]:
    """Daemons a test starts with start_daemon(); stopped after it."""
    started: list[ImapDaemon] = []
    yield started
    for d in started:
        d.stop()


def test_mail_appended_while_idling_becomes_a_ticket(
        tmp_path: Path, dovecot: Dovecot, daemon_for: list[ImapDaemon]) -> None:
    with dovecot.client() as client:
        client.create("Done")
    d = start_daemon(tmp_path, port=dovecot.port)
    daemon_for.append(d)
    wait_for(dovecot.idling, what="the watcher to IDLE")
    with dovecot.client() as client:
        client.append(raw_mail(1))
    wait_for(lambda: d.tickets() == 1, what="a ticket from the appended mail")
    assert d.ticket(1)["subject"] == "Problem 1"
    with dovecot.client() as client:
        wait_for(lambda: not client.uids("INBOX"), what="the mail to leave INBOX")
        assert len(client.uids("Done")) == 1
    assert re.search(r"inbox=1 imap:main uid=1 size=\d+ stored", d.log())


def test_daemon_killed_between_commit_and_move_makes_one_ticket(
        tmp_path: Path, dovecot: Dovecot, daemon_for: list[ImapDaemon]) -> None:
    # No "Done" folder yet: the mail is committed, then the move fails, and the daemon is
    # killed in exactly the state a crash between commit and move leaves behind.
    with dovecot.client() as client:
        client.append(raw_mail(1))
    d = start_daemon(tmp_path, port=dovecot.port)
    daemon_for.append(d)
    wait_for(lambda: d.tickets() == 1, what="the mail's ticket")
    wait_for(lambda: "moving to 'Done': NO" in d.log(), what="the move to fail")
    with dovecot.client() as client:
        assert client.uids("INBOX") == [1], "the mail must still wait in INBOX"
    d.kill()

    with dovecot.client() as client:
        client.create("Done")
    d.start()
    with dovecot.client() as client:
        wait_for(lambda: not client.uids("INBOX"), what="the mail to be moved after restart")
        assert len(client.uids("Done")) == 1
    assert re.search(r"inbox=1 imap:main uid=1 size=\d+ duplicate", d.log())
    assert d.tickets() == 1
    assert len(d.query("SELECT id FROM inbox")) == 1


class CuttingProxy:
    """A TCP relay to Dovecot that cuts every connection once, after `cut_after` bytes."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port, self.cut_after = target_port, cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.relayed, self.cuts = 0, 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, pair, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair, True),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, ...],
              count: bool) -> None:
        while data := _recv(src):
            if count:
                with self.lock:
                    self.relayed += len(data)
                    cut = self.cuts == 0 and self.relayed > self.cut_after
                    self.cuts += cut
                if cut:
                    for s in pair:
                        with contextlib.suppress(OSError):  # the other pump may close first
                            s.shutdown(socket.SHUT_RDWR)
                    return
            try:
                dst.sendall(data)
            except OSError:
                return
        for s in pair:
            s.close()

    def close(self) -> None:
        self.listener.close()


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except OSError:
        return b""


def test_connection_cut_mid_fetch_reconnects_and_completes(
        tmp_path: Path, dovecot: Dovecot, daemon_for: list[ImapDaemon]) -> None:
    with dovecot.client() as client:
        client.create("Done")
        for n in range(300):
            client.append(raw_mail(n, size=3000))
    # A batch of 100 mails is ~330 kB; the greeting, login and search are a few kB.
    proxy = CuttingProxy(dovecot.port, cut_after=100_000)
    try:
        d = start_daemon(tmp_path, port=proxy.port, batch_size=100)
        daemon_for.append(d)
        wait_for(lambda: d.tickets() == 300, timeout=90, what="300 tickets")
    finally:
        proxy.close()
    log = d.log()
    assert proxy.cuts == 1
    lost = log.index("connection lost; reconnecting in")
    assert "imap:main uid=" not in log[:lost], "the cut must come before the first commit"
    with dovecot.client() as client:
        wait_for(lambda: not client.uids("INBOX"), what="INBOX emptied")
        assert len(client.uids("Done")) == 300
    assert len(d.query("SELECT id FROM inbox")) == 300


def test_server_without_idle_is_polled(
        tmp_path: Path, daemon_for: list[ImapDaemon]) -> None:
    server = Dovecot(capabilities=CAPABILITIES.replace(" IDLE", ""))
    server.start()
    try:
        with server.client() as client:
            client.create("Done")
        d = start_daemon(tmp_path, port=server.port)
        daemon_for.append(d)
        wait_for(lambda: "no IDLE: polling every 1s" in d.log(), what="polling mode")
        with server.client() as client:
            client.append(raw_mail(1))
        wait_for(lambda: d.tickets() == 1, what="a ticket from polling")
        assert not server.idling()
    finally:
        server.stop()


def test_server_without_move_gets_copy_deleted_and_uid_expunge(
        tmp_path: Path, daemon_for: list[ImapDaemon]) -> None:
    server = Dovecot(capabilities=CAPABILITIES.replace(" MOVE", ""))
    server.start()
    try:
        with server.client() as client:
            client.create("Done")
            client.append(raw_mail(1))
            client.append(raw_mail(2))
        d = start_daemon(tmp_path, port=server.port)
        daemon_for.append(d)
        wait_for(lambda: d.tickets() == 2, what="two tickets")
        with server.client() as client:
            wait_for(lambda: not client.uids("INBOX"), what="INBOX expunged")
            assert len(client.uids("Done")) == 2
    finally:
        server.stop()


def test_uidvalidity_change_rescans_without_duplicates(
        tmp_path: Path, dovecot: Dovecot, daemon_for: list[ImapDaemon]) -> None:
    with dovecot.client() as client:
        for n in range(3):
            client.append(raw_mail(n))
    d = start_daemon(tmp_path, port=dovecot.port, after="seen")
    daemon_for.append(d)
    wait_for(lambda: d.tickets() == 3, what="three tickets")
    with dovecot.client() as client:
        wait_for(lambda: len(client.uids("INBOX", "SEEN")) == 3, what="three mails \\Seen")
    old = d.query("SELECT uidvalidity FROM imap_positions")[0][0]

    # As after a restore from backup: same mails, new UIDVALIDITY, plus one new mail.
    dovecot.doveadm("mailbox", "update", "-u", USER, "--uid-validity", str(old + 1000), "INBOX")
    with dovecot.client() as client:
        client.append(raw_mail(3))
    wait_for(lambda: d.tickets() == 4, what="a ticket for the new mail")
    wait_for(lambda: [tuple(r) for r in d.query("SELECT uidvalidity, last_uid FROM "
                                                "imap_positions")] == [(old + 1000, 4)],
             what="the new position")
    assert f"changed from {old} to {old + 1000}: rescanning" in d.log()
    assert len(re.findall(r"imap:main uid=\d+ size=\d+ duplicate", d.log())) == 3
    assert len(d.query("SELECT id FROM inbox")) == 4


def test_backlog_of_1000_mails_drains_while_smtp_intake_goes_on(
        tmp_path: Path, dovecot: Dovecot, daemon_for: list[ImapDaemon]) -> None:
    with dovecot.client() as client:
        client.create("Done")
        for n in range(1000):
            client.append(raw_mail(n))
    d = start_daemon(tmp_path, port=dovecot.port, batch_size=100)
    daemon_for.append(d)
    for n in range(20):
        d.send(mail(subject=f"By SMTP {n}"))
    wait_for(lambda: d.tickets() == 1020, timeout=150, what="1020 tickets")
    log = d.log()
    assert "backlog of 1000 mails: draining in batches of 100" in log
    assert "drained 1000 of 1000" in log
    with dovecot.client() as client:
        assert client.uids("INBOX") == []
        assert len(client.uids("Done")) == 1000
    sources = dict(tuple(r) for r in d.query(
        "SELECT source, count(*) FROM inbox GROUP BY source"))
    assert sources == {"imap:main": 1000, "smtp": 20}


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_tls_with_the_certificate_checked(
        tmp_path: Path, daemon_for: list[ImapDaemon], tls: str) -> None:
    server = Dovecot(tls=True)
    server.start()
    try:
        with server.client() as client:
            client.create("Done")
            client.append(raw_mail(1))
        shutil.copy(server.cert, tmp_path / "ca.pem")
        port = server.imaps_port if tls == "implicit" else server.port
        d = start_daemon(tmp_path, port=port, tls=tls, host="localhost",
                         extra='tls_ca_file = "ca.pem"')
        daemon_for.append(d)
        wait_for(lambda: d.tickets() == 1, what="a ticket over TLS")
    finally:
        server.stop()


def test_untrusted_certificate_is_refused_unless_turned_off_for_the_host(
        tmp_path: Path, daemon_for: list[ImapDaemon]) -> None:
    server = Dovecot(tls=True)
    server.start()
    try:
        with server.client() as client:
            client.create("Done")
            client.append(raw_mail(1))
        d = start_daemon(tmp_path, port=server.imaps_port, tls="implicit", host="localhost")
        daemon_for.append(d)
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in d.log(), what="the refusal")
        assert d.tickets() == 0
        d.stop()
        d.imap["extra"] = 'tls_no_verify_host = "localhost"'
        d.start()
        wait_for(lambda: d.tickets() == 1, what="a ticket once checks are off for the host")
    finally:
        server.stop()


def test_imap_check_shows_capabilities_and_waiting_mail_and_changes_nothing(
        tmp_path: Path, dovecot: Dovecot) -> None:
    with dovecot.client() as client:
        client.append(raw_mail(1))
        client.append(raw_mail(2))
    d = ImapDaemon(tmp_path, free_port())
    d.imap = {"port": dovecot.port}
    d.write_config()
    result = d.cli("imap-check", "main")
    assert result.returncode == 1, result.stderr  # "Done" is missing: a problem to report
    assert "IDLE" in result.stdout and "MOVE" in result.stdout
    assert "INBOX: 2 mails, 2 waiting" in result.stdout
    assert "PROBLEM: folder 'Done' does not exist" in result.stdout
    with dovecot.client() as client:
        assert client.uids("INBOX", "UNSEEN") == [1, 2]
        client.create("Done")
    result = d.cli("imap-check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "supportd.sqlite3").exists(), "checking must not create the store"


def test_imap_check_reports_a_wrong_password(tmp_path: Path, dovecot: Dovecot) -> None:
    d = ImapDaemon(tmp_path, free_port())
    d.imap = {"port": dovecot.port}
    d.write_config()
    (tmp_path / "imap.password").write_text("wrong\n")
    result = d.cli("imap-check")
    assert result.returncode == 1
    assert "PROBLEM: ImapError: login: NO" in result.stdout
