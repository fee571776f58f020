"""SMTP/LMTP intake and processing safety: refusals, duplicates, loops, failures and replay."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, body_text, free_port, mail, wait_for


def rcpt(daemon: Daemon, address: str) -> tuple[int, bytes]:
    """The server's answer to RCPT TO:<address> in a fresh session."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        client.ehlo()
        client.mail("carol@customer.example")
        return client.rcpt(address)


def test_unknown_recipient_is_refused_at_rcpt(daemon: Daemon) -> None:
    code, message = rcpt(daemon, "sales@example.com")
    assert code == 550
    assert message.startswith(b"5.1.1 <sales@example.com>")


def test_forged_reply_token_is_refused_at_rcpt(daemon: Daemon) -> None:
    assert rcpt(daemon, "support+1-0123456789abcdef@example.com")[0] == 550


def test_reply_token_of_a_ticket_is_accepted_at_rcpt(daemon: Daemon) -> None:
    daemon.send(mail())
    [ack] = [m for m in daemon.new_mail(2) if m["To"] == "carol@customer.example"]
    assert rcpt(daemon, str(ack["Reply-To"]))[0] == 250


def test_too_large_mail_is_refused_with_552(tmp_path: Path) -> None:
    d = Daemon(tmp_path, free_port(), max_size=4096)
    d.start()
    try:
        with pytest.raises(smtplib.SMTPException) as refused:
            d.send(mail(body="x" * 10_000))
        assert "552" in str(refused.value)
        assert d.query("SELECT count(*) AS n FROM inbox")[0]["n"] == 0
    finally:
        d.stop()


def test_same_mail_delivered_twice_is_stored_once(daemon: Daemon) -> None:
    message = mail(message_id="<retry-1@customer.example>")
    daemon.send(message)
    daemon.send(message)  # an MTA retrying after a lost 250

    daemon.new_mail(2)  # one acknowledgement, one agent notification
    assert daemon.no_new_mail() == []
    assert daemon.query("SELECT count(*) AS n FROM inbox")[0]["n"] == 1
    assert daemon.query("SELECT count(*) AS n FROM tickets")[0]["n"] == 1


def test_mail_is_stored_before_250_with_raw_bytes_kept(daemon: Daemon) -> None:
    message = mail(message_id="<kept@customer.example>")
    daemon.send(message)
    [row] = daemon.query("SELECT raw, source, mail_from, rcpt_to FROM inbox")
    stored = row["raw"].replace(b"\r\n", b"\n").rstrip(b"\n")
    assert stored == message.as_bytes().replace(b"\r\n", b"\n").rstrip(b"\n")
    assert (row["source"], row["mail_from"]) == ("smtp", "carol@customer.example")


def test_autoresponder_with_rfc3834_headers_is_never_answered(daemon: Daemon) -> None:
    daemon.send(mail())
    [ack] = [m for m in daemon.new_mail(2) if m["To"] == "carol@customer.example"]
    auto = mail(subject="Out of office: " + ack["Subject"], body="I am away.",
                Auto_Submitted="auto-replied")
    auto["In-Reply-To"] = ack["Message-ID"]

    daemon.send(auto)

    assert daemon.no_new_mail() == []
    assert any("auto_submitted" in e for e in daemon.events(1))


def test_autoresponder_without_headers_is_cut_off_by_the_hourly_limit(daemon: Daemon) -> None:
    """A broken autoresponder answering every mail as new mail: the exchange must stop."""
    acks = 0
    daemon.send(mail(subject="first"))
    for round_ in range(8):
        sent = daemon.no_new_mail()
        daemon.seen_outbox.update(daemon.outbox_files())
        to_carol = [m for m in sent if m["To"] == "carol@customer.example"]
        acks += len(to_carol)
        if not to_carol:
            break
        # It answers with a fresh subject and no threading headers: each looks like new mail.
        daemon.send(mail(subject=f"Thank you for your mail {round_}", body="We got it."))
    assert acks == 3  # auto_mail_limit in the test config
    assert any("rate_limited" in e for r in daemon.query("SELECT id FROM tickets")
               for e in daemon.events(r["id"]))


def test_lmtp_answers_once_per_recipient(tmp_path: Path) -> None:
    d = Daemon(tmp_path, free_port(), lmtp_port=free_port())
    d.start()
    try:
        with smtplib.LMTP("127.0.0.1", d.lmtp_port) as client:
            client.ehlo_or_helo_if_needed()
            client.mail("carol@customer.example")
            client.rcpt("support@example.com")
            client.rcpt("support@example.com")
            client.putcmd("data")
            assert client.getreply()[0] == 354
            client.send(mail().as_bytes().replace(b"\n", b"\r\n") + b"\r\n.\r\n")
            first, second = client.getreply(), client.getreply()
        assert first[0] == second[0] == 250
        d.new_mail(2)
        assert d.query("SELECT source FROM inbox")[0]["source"] == "lmtp"
    finally:
        d.stop()


def test_a_mail_whose_template_fails_is_held_and_replay_sends_it(
    tmp_path: Path, copied_templates: Path
) -> None:
    """A site's template names a value that does not exist: the ticket is made, the mail that
    cannot be rendered is held as failed with the error, and sent after a fix and a replay."""
    good = (copied_templates / "acknowledgement.txt.j2").read_text()
    (copied_templates / "acknowledgement.txt.j2").write_text(good + "{{ ticket.nonexistent }}\n")
    d = Daemon(tmp_path, free_port(), templates=copied_templates)
    d.start()
    try:
        d.send(mail(message_id="<fails@customer.example>"))
        wait_for(lambda: d.query("SELECT 1 FROM outbox WHERE state = 'failed'"),
                 what="the acknowledgement to fail")
        [held] = d.query("SELECT * FROM outbox WHERE state = 'failed'")
        assert held["kind"] == "acknowledgement" and "nonexistent" in held["last_error"]
        assert d.query("SELECT state FROM inbox")[0]["state"] == "done"
        assert [m["To"] for m in d.new_mail(1)] == ["alice@example.com"]  # the rest goes out

        (copied_templates / "acknowledgement.txt.j2").write_text(good)
        replay = d.cli("replay", "--failed")

        assert replay.returncode == 0, replay.stderr
        assert "1 failed mail queued again" in replay.stdout
        [ack] = d.new_mail(1)
        assert ack["To"] == "carol@customer.example" and "ticket #1" in body_text(ack)
    finally:
        d.stop()
