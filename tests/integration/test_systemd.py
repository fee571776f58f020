"""supportd under systemd: sd_notify on a real NOTIFY_SOCKET, SIGHUP, SIGTERM drain, /metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import REPO, Daemon, free_port, mail, wait_for

WATCHDOG_USEC = 300_000  # pings every 0.15 s


class NotifySocket:
    """The datagram socket systemd would listen on; records every sd_notify message."""

    def __init__(self) -> None:
        self.address = f"@supportd-test-{uuid.uuid4().hex}"  # abstract: no path length limit
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def wait(self, key: str, value: str | None = None, *, after: int = 0,
             timeout: float = 15.0) -> int:
        """Wait for a message with key (=value) at index >= after; returns its index."""
        def found() -> int | None:
            self._receive()
            return next((i for i, (_, m) in enumerate(self.messages)
                         if i >= after and key in m and value in (None, m[key])), None)
        wait_for(lambda: found() is not None, timeout=timeout, what=f"sd_notify {key}")
        index = found()
        assert index is not None
        return index

    def close(self) -> None:
        self.sock.close()


class SystemdDaemon(Daemon):
    """The daemon with a short SIGTERM grace period and /metrics on a free port."""

    http_port: int = 0

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        text = text.replace("[smtp]\n", "[smtp]\nshutdown_grace = 1\nshutdown_timeout = 20\n", 1)
        self.config_path.write_text(text + f'\n[http]\nlisten = "127.0.0.1:{self.http_port}"\n')


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def daemon(tmp_path: Path, notify: NotifySocket) -> Iterator[SystemdDaemon]:
    d = SystemdDaemon(tmp_path, free_port(),
                      env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    d.http_port = free_port()
    d.start()
    yield d
    d.stop()


def signal_daemon(d: Daemon, sig: signal.Signals) -> None:
    assert d.process is not None
    d.process.send_signal(sig)


def test_ready_comes_with_a_status_once_the_store_and_listeners_are_up(
        daemon: SystemdDaemon, notify: NotifySocket) -> None:
    ready = notify.messages[notify.wait("READY", "1")][1]
    assert ready["STATUS"] == "0 mails today, 0 open tickets, outbox 0 queued"
    assert daemon.query("SELECT max(version) FROM schema_version")[0][0] >= 1
    socket.create_connection(("127.0.0.1", daemon.http_port), timeout=5).close()


def test_watchdog_pings_come_from_the_loop_at_half_the_watchdog_interval(
        daemon: SystemdDaemon, notify: NotifySocket) -> None:
    notify.wait("WATCHDOG", "1")
    # Pings that queued up before the test read them share one receive time: skip them.
    first = last = notify.wait("WATCHDOG", "1", after=len(notify.messages))
    for _ in range(10):
        last = notify.wait("WATCHDOG", "1", after=last + 1)
    pings = [t for t, m in notify.messages[first:last + 1] if m.get("WATCHDOG") == "1"]
    assert len(pings) == 11
    # Ten intervals of 0.15 s take at least 1.5 s; half that leaves room for the test's own
    # polling and catches a daemon pinging far too often. An upper bound would time the machine.
    assert pings[-1] - pings[0] >= 10 * WATCHDOG_USEC / 2 / 1e6 * 0.5


def test_sighup_reloads_the_config_without_dropping_an_open_smtp_session(
        daemon: SystemdDaemon, notify: NotifySocket) -> None:
    ready = notify.wait("READY", "1")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=15) as client:
        client.ehlo()
        assert client.docmd("RCPT TO:<help@example.com>")[0] == 503  # no MAIL yet: sanity
        client.mail("carol@customer.example")
        assert client.rcpt("help@example.com")[0] == 550
        client.rset()
        text = daemon.config_path.read_text()
        daemon.config_path.write_text(text.replace(
            'addresses = ["support@example.com"]',
            'addresses = ["support@example.com", "help@example.com"]'))
        signal_daemon(daemon, signal.SIGHUP)
        reloading = notify.wait("RELOADING", "1", after=ready + 1)
        assert int(notify.messages[reloading][1]["MONOTONIC_USEC"]) > 0
        notify.wait("READY", "1", after=reloading + 1)
        msg = mail(to="help@example.com", subject="Reloaded")
        client.mail("carol@customer.example")
        assert client.rcpt("help@example.com")[0] == 250
        code, _ = client.data(msg.as_bytes())
        assert code == 250
    assert "reloaded" in daemon.log()


def test_a_broken_config_on_reload_is_rejected_and_the_old_one_kept(
        daemon: SystemdDaemon, notify: NotifySocket) -> None:
    ready = notify.wait("READY", "1")
    good = daemon.config_path.read_text()
    daemon.config_path.write_text(good.replace(
        'addresses = ["support@example.com"]',
        'addresses = ["help@example.com"]\nsubject_prefx = "typo"'))
    signal_daemon(daemon, signal.SIGHUP)
    notify.wait("READY", "1", after=notify.wait("RELOADING", "1", after=ready + 1) + 1)
    assert f"{daemon.config_path}: support.subject_prefx: unknown key (a typo?)" in daemon.log()
    assert "reload rejected, old config kept" in daemon.log()
    assert daemon.send(mail(subject="Still the old config")) == {}
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        daemon.send(mail(to="help@example.com"))
    assert daemon.process is not None and daemon.process.poll() is None


def _read_reply(sock: socket.socket) -> bytes:
    """One SMTP reply (all its lines), read from a blocking socket."""
    data = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def _command(sock: socket.socket, line: str) -> bytes:
    sock.sendall(line.encode() + b"\r\n")
    return _read_reply(sock)


def test_sigterm_lets_a_mail_in_its_data_phase_finish_and_refuses_new_commands(
        daemon: SystemdDaemon, notify: NotifySocket) -> None:
    ready = notify.wait("READY", "1")
    sending = socket.create_connection(("127.0.0.1", daemon.port), timeout=15)
    idle = socket.create_connection(("127.0.0.1", daemon.port), timeout=15)
    for sock in (sending, idle):
        assert _read_reply(sock).startswith(b"220")
        assert _command(sock, "EHLO client.example").startswith(b"250")
    assert _command(sending, "MAIL FROM:<carol@customer.example>").startswith(b"250")
    assert _command(sending, "RCPT TO:<support@example.com>").startswith(b"250")
    assert _command(sending, "DATA").startswith(b"354")
    raw = mail(subject="Sent while the daemon stops", message_id="<drain@customer.example>")
    head, body = raw.as_bytes().split(b"\n\n", 1)
    sending.sendall(head.replace(b"\n", b"\r\n") + b"\r\n\r\n")

    signal_daemon(daemon, signal.SIGTERM)
    notify.wait("STOPPING", "1", after=ready + 1)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", daemon.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False
    wait_for(refused, what="the SMTP listener to close")
    # After the grace period the idle session is told 421 and closed.
    assert _read_reply(idle).startswith(b"421 4.3.2")
    assert idle.recv(100) == b""

    sending.sendall(body.replace(b"\n", b"\r\n") + b"\r\n.\r\n")
    assert _read_reply(sending).startswith(b"250 2.0.0 OK queued as inbox")
    assert _command(sending, "MAIL FROM:<carol@customer.example>").startswith(b"421 4.3.2")
    sending.close()
    idle.close()

    assert daemon.process is not None
    assert daemon.process.wait(timeout=20) == 0
    rows = daemon.query("SELECT raw FROM inbox WHERE dedupe_key LIKE '%drain@customer.example%'")
    assert len(rows) == 1 and b"Sent while the daemon stops" in rows[0]["raw"]
    assert "SMTP drained, 0 session(s) cut off" in daemon.log()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_are_prometheus_text_and_count_mail_tickets_and_outbox(
        daemon: SystemdDaemon) -> None:
    assert daemon.send(mail(subject="Count me")) == {}
    daemon.new_mail(2)  # acknowledgement to the customer, new-ticket mail to the agent
    wait_for(daemon.inbox_settled, what="inbox processed")

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        status, text = _get(f"http://127.0.0.1:{daemon.http_port}/metrics")
        assert status == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        # The worker counts a delivery just after recording it, a moment after the file is there.
        sent = samples.get(("supportd_outbox_deliveries_total", (("result", "sent"),)))
        return samples if sent == 2 else None

    samples = wait_for(scrape, what="both deliveries counted in /metrics")
    assert samples[("supportd_mails_received_total",
                    (("outcome", "stored"), ("source", "smtp")))] == 1
    assert samples[("supportd_mails_processed_total", (("outcome", "done"),))] == 1
    assert samples[("supportd_processing_seconds_count", ())] == 1
    assert samples[("supportd_tickets", (("status", "new"),))] == 1
    assert samples[("supportd_outbox_mails", (("state", "queued"),))] == 0
    assert samples[("supportd_outbox_deliveries_total", (("result", "sent"),))] == 2

    status, text = _get(f"http://127.0.0.1:{daemon.http_port}/healthz")
    assert status == 200
    health = json.loads(text)
    assert health["status"] == "ok"
    assert health["checks"]["store"] == "ok" and health["checks"]["outbox"] == "ok: 0 queued"


def test_under_journald_lines_carry_a_syslog_priority_and_no_timestamp(tmp_path: Path) -> None:
    log = tmp_path / "supportd.log"
    log.touch()
    stat = log.stat()
    d = Daemon(tmp_path, free_port(), env={"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
    d.start()
    d.stop()
    lines = d.log().splitlines()
    # SIGTERM right after the port opens still lets it get ready, then stop cleanly.
    assert d.process is not None and d.process.returncode == 0, d.log()
    assert "<6>supportd: supportd ready: store" in "\n".join(lines)
    assert all(re.match(r"<[0-7]>\S+: ", line) for line in lines), lines


def test_the_smtp_socket_can_come_from_systemd_socket_activation(tmp_path: Path) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is missing: `make test` installs systemd")
    d = Daemon(tmp_path, free_port())
    d.write_config()
    passed = free_port()
    log = open(tmp_path / "supportd.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [tool, "-l", f"127.0.0.1:{passed}", "--fdname=smtp", sys.executable, "-m",
         "supportd.cli", "--config", str(d.config_path), "run"],
        stdout=log, stderr=log, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO / "daemon")})
    log.close()
    d.process = process
    try:
        wait_for(lambda: f"Listening on 127.0.0.1:{passed}" in d.log(), what="the socket")
        # Like systemd, the tool starts supportd at the first connection; it waits meanwhile.
        with smtplib.SMTP("127.0.0.1", passed, timeout=30) as client:
            assert client.sendmail("carol@customer.example", ["support@example.com"],
                                   mail(subject="Via systemd's socket").as_bytes()) == {}
        assert "listening for SMTP on a socket from systemd" in d.log()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", d.port), timeout=5)
    finally:
        d.stop()
    assert process.returncode == 0
