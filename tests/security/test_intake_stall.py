"""Finding 6: one mail stalls all intake.

The reviewer's 3.3 MB mail of folded RFC 2047 encoded words held the write lock for 78 s, so a
normal mail sent meanwhile waited that long for its 250, and `/healthz` said ok throughout.
Here the same mail goes to the real daemon, a normal mail follows at once, and `/healthz` is
asked about a worker that is stuck in a step.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from supportd.metrics import WORKER_REGISTRY, processing_step
from supportd.web.monitoring import processing_check
from tests.integration.conftest import Daemon, free_port, mail, wait_for, worker_pid

BIG = 3_300_000


def folded_encoded_words(size: int) -> bytes:
    """The reviewer's mail: a Subject of adjacent encoded words, one per folded line."""
    word = b"=?utf-8?q?caf=C3=A9_?="
    head = (b"From: <mallory@evil.example>\r\nTo: <support@example.com>\r\n"
            b"Message-ID: <encoded-words@evil.example>\r\nSubject: ")
    words = b"\r\n ".join([word] * ((size - len(head)) // (len(word) + 3)))
    return head + words + b"\r\n\r\nSee the subject.\r\n"


class HttpDaemon(Daemon):
    """The daemon with /healthz on a free port."""

    http_port: int = 0

    def write_config(self) -> None:
        super().write_config()
        with self.config_path.open("a") as config:
            config.write(f'\n[http]\nlisten = "127.0.0.1:{self.http_port}"\n')


@pytest.fixture
def big_daemon(tmp_path: Path) -> Iterator[HttpDaemon]:
    """The daemon of the integration tests, taking mail up to 4 MB, with /healthz."""
    d = HttpDaemon(tmp_path, free_port(), max_size=4_000_000)
    d.http_port = free_port()
    d.start()
    yield d
    d.stop()


def data_reply_within(daemon: Daemon, raw: bytes, seconds: float) -> tuple[int, bytes]:
    """Send `raw` on a new connection; the reply to its DATA must come within `seconds`."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=15) as client:
        client.ehlo()
        assert client.mail("carol@customer.example")[0] == 250
        assert client.rcpt("support@example.com")[0] == 250
        assert client.sock is not None
        client.sock.settimeout(seconds)  # only for DATA and its reply
        try:
            return client.data(raw)
        except smtplib.SMTPServerDisconnected as error:  # smtplib's word for a timeout
            raise AssertionError(f"no reply to DATA within {seconds} s: {error}") from error


def healthz(daemon: HttpDaemon) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{daemon.http_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_normal_mail_gets_its_250_within_1_s_after_a_3_mb_encoded_word_mail(
        big_daemon: HttpDaemon) -> None:
    """Finding 6: the 3.3 MB encoded-word mail, then at once normal mails, each on a new
    connection, for as long as the big one is in processing (up to 50). Each normal mail's 250
    comes within 1 s and it becomes a ticket; the big mail is processed too, its Subject cut
    at the header limit, its raw bytes kept whole."""
    big = folded_encoded_words(BIG)
    assert big_daemon.send(big, mail_from="mallory@evil.example",
                           to=["support@example.com"]) == {}
    normal = 0
    while normal < 50 and not big_daemon.inbox_settled():
        normal += 1
        sent = mail(subject=f"Normal mail {normal}")
        code, reply = data_reply_within(big_daemon, sent.as_bytes(policy=SMTP), 1.0)
        assert code == 250, reply

    wait_for(big_daemon.inbox_settled, timeout=60, what="all mails processed")
    first, *others = big_daemon.query(
        "SELECT i.raw, i.state, m.ticket_id, m.subject FROM inbox i "
        "LEFT JOIN messages m ON m.inbox_id = i.id ORDER BY i.id")
    assert first["raw"].rstrip(b"\r\n") == big.rstrip(b"\r\n")
    assert first["state"] == "done" and first["ticket_id"] is not None
    assert first["subject"].startswith("café café") and len(first["subject"]) < len(big) / 8
    assert any(e.startswith("not read whole: ") and "kept raw as inbox 1" in e
               for e in big_daemon.events(first["ticket_id"]))  # marked for an agent
    assert [(row["state"], row["subject"]) for row in others] == [
        ("done", f"Normal mail {n}") for n in range(1, normal + 1)]
    assert len({row["ticket_id"] for row in [first, *others]}) == 1 + normal
    status, health = healthz(big_daemon)
    assert status == 200 and health["checks"]["processing"] == "ok: idle", health


def test_healthz_fails_while_the_worker_is_stuck_and_recovers_after(big_daemon: HttpDaemon) -> None:
    """Finding 6: `/healthz` said ok while one mail held processing for minutes. A worker
    that cannot answer (here stopped with SIGSTOP, as a step that never yields) makes it fail
    with the reason; once the worker runs again it is ok."""
    status, health = healthz(big_daemon)
    assert status == 200, health
    worker = worker_pid(big_daemon)
    os.kill(worker, signal.SIGSTOP)
    try:
        status, health = healthz(big_daemon)
    finally:
        os.kill(worker, signal.SIGCONT)
    assert status == 503, health
    assert health["checks"]["processing"].startswith("failed: the worker did not answer"), health
    wait_for(lambda: healthz(big_daemon)[0] == 200, what="/healthz ok again")


def test_processing_step_longer_than_its_bound_fails_healthz() -> None:
    """Finding 6: the worker's gauge of the step in hand, as `/healthz` reads it from the
    worker's snapshot: ok while idle and while a step is young, failed once it has run longer
    than the bound, with how long."""
    late = timedelta(seconds=30)
    assert processing_check(generate_latest(WORKER_REGISTRY), datetime.now(UTC), late) == \
        "ok: idle"
    with processing_step():
        snapshot = generate_latest(WORKER_REGISTRY)
    started = datetime.now(UTC)
    assert processing_check(snapshot, started + timedelta(seconds=5), late).startswith(
        "ok: a step running for 5")
    assert processing_check(snapshot, started + timedelta(seconds=78), late).startswith(
        "failed: a processing step has run for 78")
    assert processing_check(b"", started, late).startswith("failed: the worker did not answer")
