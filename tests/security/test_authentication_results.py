"""Finding 2: Authentication-Results are believed only from a listener behind the trusted MTA.

The test config trusts the authserv-id mx.example.com. A mail carrying that id's DKIM pass
counts only where it came through a listener declared to sit behind that MTA, and only when
the header is above the first Received: header, where the MTA puts its own.
"""

from __future__ import annotations

import email.policy
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from supportd.app import open_to_others
from supportd.config import load_config
from tests.integration.conftest import Daemon, body_text, free_port, mail

CUSTOMER = "carol@customer.example"
FORGED = "mx.example.com; dkim=pass header.d=example.com"
# What Postfix writes when it takes a mail from the Internet before handing it on by LMTP.
MTA_RECEIVED = ("from mail.example.net (mail.example.net [192.0.2.7]) by mx.example.com "
                "(Postfix) with ESMTPS id 4Xy1; Mon, 30 Nov 2026 10:00:00 +0000")
TRUST_LMTP = ("[smtp]\n", "[smtp]\nlmtp_trust_authentication_results = true\n")


@pytest.fixture
def behind_mta(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose loopback LMTP listener is declared to sit behind mx.example.com."""
    d = Daemon(tmp_path, free_port(), lmtp_port=free_port(), edits=(TRUST_LMTP,))
    d.start()
    yield d
    d.stop()


def open_ticket(daemon: Daemon) -> None:
    daemon.send(mail(sender=CUSTOMER))
    daemon.new_mail(2)  # the acknowledgement and Alice's notification


def alices_command(*headers: tuple[str, str]) -> bytes:
    """Alice (or someone using her address) solving ticket 1, `headers` on top in this order,
    as the MTAs on the way prepend theirs."""
    msg = mail(sender="alice@example.com", subject="Re: [Support #1] Our app is down",
               body="#status solved\n\nFixed.")
    top = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return top.encode() + msg.as_bytes(policy=email.policy.SMTP)


def send_smtp(daemon: Daemon, raw: bytes) -> None:
    daemon.send(raw, mail_from="alice@example.com", to=["support@example.com"])


def send_lmtp(daemon: Daemon, raw: bytes) -> None:
    assert daemon.lmtp_port is not None
    with smtplib.LMTP("127.0.0.1", daemon.lmtp_port, timeout=15) as client:
        client.sendmail("alice@example.com", ["support@example.com"], raw)


def test_forged_header_on_the_smtp_listener_runs_no_command(daemon: Daemon) -> None:
    """Finding 2: a sender writes mx.example.com's dkim=pass for example.com into its own
    mail from alice@example.com and sends it to the SMTP listener, which no trusted MTA
    stands in front of: `#status solved` is not run, nothing is relayed, and the events
    say the agent's address was not authenticated."""
    open_ticket(daemon)

    send_smtp(daemon, alices_command(("Authentication-Results", FORGED)))

    assert daemon.no_new_mail() == []
    assert daemon.ticket(1)["status"] == "new"
    assert any(e.startswith("unauthenticated:") for e in daemon.events(1))


def test_header_from_the_mta_on_a_trusted_lmtp_listener_runs_the_command(
    behind_mta: Daemon,
) -> None:
    """Finding 2, the other side: the same mail handed over by the MTA on the loopback LMTP
    listener that trusts it, its header above the MTA's Received:, authenticates Alice."""
    open_ticket(behind_mta)

    send_lmtp(behind_mta, alices_command(("Authentication-Results", FORGED),
                                         ("Received", MTA_RECEIVED)))

    [relay] = behind_mta.new_mail(1)
    assert relay["To"] == CUSTOMER and "Fixed." in body_text(relay)
    assert behind_mta.ticket(1)["status"] == "solved"


def test_header_below_the_mtas_received_is_the_senders_and_runs_no_command(
    behind_mta: Daemon,
) -> None:
    """Finding 2: through the trusted MTA, a forged header the sender wrote sits below the
    Received: header the MTA added (RFC 8601 §5), so it authenticates nobody."""
    open_ticket(behind_mta)

    send_lmtp(behind_mta, alices_command(("Received", MTA_RECEIVED),
                                         ("Authentication-Results", FORGED)))

    assert behind_mta.no_new_mail() == []
    assert behind_mta.ticket(1)["status"] == "new"
    assert any(e.startswith("unauthenticated:") for e in behind_mta.events(1))


def test_trust_on_a_listener_open_to_the_internet_refuses_to_start(tmp_path: Path) -> None:
    """Finding 2: a config that trusts the header on a listener bound to 0.0.0.0 cannot
    start; the error names the file, the key and why."""
    d = Daemon(tmp_path, free_port(), edits=(
        ('listen = "127.0.0.1:', 'trust_authentication_results = true\nlisten = "0.0.0.0:'),))
    d.write_config()

    run = d.cli("run")

    assert run.returncode == 2
    assert f"{d.config_path}: smtp.trust_authentication_results: " in run.stderr
    assert "0.0.0.0" in run.stderr and "loopback" in run.stderr


def test_trust_on_a_socket_bound_beyond_loopback_is_refused(tmp_path: Path) -> None:
    """Finding 2: the listen address in the file is not all there is: a socket from systemd,
    or a listener still bound to its old address after a reload, may be open to anyone.
    The daemon checks the sockets it really listens on before it trusts a listener."""
    d = Daemon(tmp_path, free_port(), lmtp_port=free_port(), edits=(TRUST_LMTP,))
    d.write_config()
    config = load_config(d.config_path)
    with socket.socket() as public, socket.socket() as local, \
            socket.socket(socket.AF_UNIX) as unix:
        public.bind(("0.0.0.0", 0))  # bound, never listening: nobody can connect
        local.bind(("127.0.0.1", 0))
        unix.bind(str(tmp_path / "lmtp.sock"))

        port = public.getsockname()[1]
        refused = open_to_others(config, {"lmtp": [public], "smtp": [public]})
        accepted = open_to_others(config, {"lmtp": [local, unix], "smtp": [public]})

    [error] = refused  # smtp is not trusted, so where it listens does not matter
    assert error.key == "smtp.lmtp_trust_authentication_results"
    assert f"bound to 0.0.0.0:{port}, not a loopback" in error.reason
    assert accepted == []
