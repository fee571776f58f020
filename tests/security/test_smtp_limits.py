"""Finding 12: the limits a mail server has, each answered with its RFC 5321/3463 reply."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, free_port, mail, wait_for


def test_recipient_over_one_hundred_in_a_transaction_gets_452(daemon: Daemon) -> None:
    """Finding 12: a client names support@ 101 times in one transaction. The first 100
    (the default `smtp.max_recipients`, RFC 5321 §4.5.3.1.8) are accepted, the 101st gets
    `452 4.5.3`, and the mail is still stored for the 100."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=15) as client:
        client.ehlo()
        client.mail("carol@customer.example")
        answers = [client.rcpt("support@example.com") for _ in range(101)]
        assert client.data(mail().as_bytes())[0] == 250

    assert {code for code, _ in answers[:100]} == {250}
    code, text = answers[100]
    assert (code, text.split(b" ")[0]) == (452, b"4.5.3")
    assert b"too many recipients" in text
    [row] = daemon.query("SELECT rcpt_to FROM inbox")
    assert row["rcpt_to"].count("support@example.com") == 100


def test_twenty_first_unknown_recipient_ends_the_connection_with_421(daemon: Daemon) -> None:
    """Finding 12: a client guessing addresses gets `550 5.1.1` for 20 unknown recipients
    (the default `smtp.max_invalid_recipients`); the 21st is answered `421 4.7.0` and the
    connection is closed. A new connection is served as before."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=15) as client:
        client.ehlo()
        client.mail("guesser@evil.example")
        answers = [client.rcpt(f"user{n}@example.com") for n in range(21)]
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.rcpt("support@example.com")

    assert {code for code, _ in answers[:20]} == {550}
    code, text = answers[20]
    assert (code, text.split(b" ")[0]) == (421, b"4.7.0")
    assert daemon.send(mail()) == {}


@pytest.fixture
def three_sessions(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, free_port(), edits=(("[smtp]\n", "[smtp]\nmax_sessions = 3\n"),))
    d.start()
    yield d
    d.stop()


def greeting(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, sock.recv(512)


def test_session_over_the_configured_bound_gets_421(three_sessions: Daemon) -> None:
    """Finding 12: with `smtp.max_sessions = 3`, three idle clients hold their sessions;
    a fourth is greeted `421 4.7.0` and closed instead of `220`. Once one of the three
    leaves, a new client is served again."""
    held = [greeting(three_sessions.port) for _ in range(3)]
    assert all(banner.startswith(b"220 ") for _, banner in held)

    refused, banner = greeting(three_sessions.port)

    assert banner.startswith(b"421 4.7.0 ")
    assert refused.recv(512) == b""  # closed by the server
    refused.close()
    held[0][0].close()
    wait_for(lambda: greeting(three_sessions.port)[1].startswith(b"220 "),
             what="a free session after one client left")
    for sock, _ in held[1:]:
        sock.close()
