"""Findings 1, 3, 5, 7, 8 and 9: who may join a ticket, what a loop guard may hold back,
reused Message-IDs, cc floods, huge bodies, and replies to a command-error mail."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

from tests.integration.conftest import Daemon, body_text, free_port, mail, reply_to

CUSTOMER = "carol@customer.example"


def open_ticket(daemon: Daemon) -> tuple[EmailMessage, EmailMessage]:
    """Carol writes in; returns (acknowledgement to Carol, notification to Alice)."""
    daemon.send(mail(sender=CUSTOMER, message_id="<first@customer.example>"))
    sent = {m["To"]: m for m in daemon.new_mail(2)}
    return sent[CUSTOMER], sent["alice@example.com"]


def participants(daemon: Daemon, ticket_id: int) -> list[str]:
    return [r["email"] for r in daemon.query(
        "SELECT email FROM participants WHERE ticket_id = ? ORDER BY rowid", ticket_id)]


def test_a_planted_message_id_does_not_let_a_stranger_into_the_ticket(daemon: Daemon) -> None:
    """Finding 1: a stranger sends `From: alice@example.com`, `Subject: Re: [Support #1] x`,
    `Message-ID: <plant@evil.example>` without any token; then mallory@evil.example replies
    with `In-Reply-To: <plant@evil.example>`. Mallory must not become a cc of ticket 1 (and
    so never receive its relays or its customer token): her mail is a new ticket."""
    _, note = open_ticket(daemon)
    daemon.send(mail(sender="alice@example.com", subject="Re: [Support #1] x",
                     message_id="<plant@evil.example>", body="planted"))
    assert daemon.no_new_mail() == []
    hijack = mail(sender="mallory@evil.example", subject="Re: [Support #1] x",
                  body="I am on this ticket now.")
    hijack["In-Reply-To"] = "<plant@evil.example>"
    daemon.send(hijack)
    sent = daemon.new_mail(2)  # mallory's own acknowledgement, and Alice's notice of it

    assert participants(daemon, 1) == [CUSTOMER]
    assert {m["Subject"] for m in sent} == {"Re: [Support #2] x", "[Support #2] x"}
    assert daemon.ticket(2)["requester"] == "mallory@evil.example"
    assert any("not used for threading" in e for e in daemon.events(1))
    # Alice's next answer on ticket 1 goes to Carol alone.
    daemon.send(reply_to(note, sender="alice@example.com", body="We are on it."))
    assert [m["To"] for m in daemon.new_mail(1)] == [CUSTOMER]


def test_a_participant_added_by_a_reply_is_an_event_and_the_agent_is_told(
        daemon: Daemon) -> None:
    """Finding 1: adding a participant is explicit: in `supportd show` and in the agents'
    notification. Carol forwards our acknowledgement to Dan, who answers it."""
    ack, _ = open_ticket(daemon)
    daemon.send(reply_to(ack, sender="dan@customer.example", body="Same here since noon."))

    [note] = daemon.new_mail(1)
    assert participants(daemon, 1) == [CUSTOMER, "dan@customer.example"]
    assert ("dan@customer.example was added to this ticket by dan@customer.example"
            in body_text(note))
    shown = daemon.cli("show", "1").stdout
    assert "dan@customer.example was added as cc by dan@customer.example" in shown


def reach_the_hourly_limit_of_automatic_mail(daemon: Daemon) -> EmailMessage:
    """An acknowledgement and two status notices to Carol: the limit of 3 is reached."""
    _, note = open_ticket(daemon)
    daemon.send(reply_to(note, sender="alice@example.com", body="#status pending"))
    daemon.send(reply_to(note, sender="alice@example.com", body="#status solved"))
    notices = daemon.new_mail(2)
    assert [m["Auto-Submitted"] for m in notices] == ["auto-generated"] * 2
    return notices[-1]


def test_a_customer_over_the_automatic_mail_limit_still_reopens_and_is_heard(
        daemon: Daemon) -> None:
    """Finding 3a: after an acknowledgement and two status notices (auto_mail_limit = 3),
    Carol's real reply was classified rate_limited: stored, nobody told, still Solved."""
    solved = reach_the_hourly_limit_of_automatic_mail(daemon)
    daemon.send(reply_to(solved, sender=CUSTOMER, body="It is broken again."))

    [note] = daemon.new_mail(1)
    assert note["To"] == "alice@example.com" and "broken again" in body_text(note)
    assert daemon.ticket(1)["status"] == "open"


def test_forged_reply_to_mails_do_not_silence_the_real_person(daemon: Daemon) -> None:
    """Finding 3b: three mails with a forged `Reply-To: dave@customer.example` used up
    Dave's automatic mails; his real "production is down" mail then reached nobody."""
    for n in range(3):
        daemon.send(mail(sender=f"robot{n}@spam.example", subject=f"offer {n}",
                         Reply_To="dave@customer.example"))
    daemon.new_mail(6)  # three acknowledgements to Dave, three notices to Alice
    daemon.send(mail(sender="dave@customer.example", subject="production is down"))

    [note] = daemon.new_mail(1)  # Alice hears of it; only the acknowledgement is held back
    assert note["To"] == "alice@example.com" and "production is down" in note["Subject"]
    assert any("acknowledgement to dave@customer.example held back: rate_limited" in e
               for e in daemon.events(4))


def test_forged_agent_mails_do_not_use_up_the_tickets_budget(daemon: Daemon) -> None:
    """Finding 3c: twenty forged agent mails into one ticket reached the ticket's loop
    limit, and Alice's genuine token-authenticated reply was then not relayed."""
    _, note = open_ticket(daemon)
    for n in range(20):
        daemon.send(mail(sender="alice@example.com", subject="Re: [Support #1] Our app is down",
                         body=f"#status solved\n\nforged {n}"))
    assert daemon.no_new_mail() == []
    daemon.send(reply_to(note, sender="alice@example.com", body="Fixed, please retry."))

    [relay] = daemon.new_mail(1)
    assert relay["To"] == CUSTOMER and "Fixed, please retry." in body_text(relay)


def test_a_stranger_reusing_a_message_id_does_not_swallow_the_real_mail(
        daemon: Daemon) -> None:
    """Finding 5: a stranger sends the customer's Message-ID first; the real mail was then
    answered `250 ... duplicate` and never stored."""
    first = daemon.send(mail(sender="mallory@evil.example", message_id="<real@customer.example>",
                             body="I came first."))
    daemon.new_mail(2)
    daemon.send(mail(sender=CUSTOMER, message_id="<real@customer.example>",
                     body="Our app is down."))

    sent = daemon.new_mail(2)
    assert first == {} and CUSTOMER in {m["To"] for m in sent}
    assert daemon.query("SELECT count(*) AS n FROM inbox")[0]["n"] == 2
    assert any(e.startswith("message-id reused") for e in daemon.events(2))


def test_a_device_that_always_sends_the_same_message_id_gets_every_alert_in(
        daemon: Daemon) -> None:
    """Finding 5: a device always sending `Message-ID: <1@localhost>` got one alert stored."""
    for alert in ("disk full", "disk very full"):
        daemon.send(mail(sender="nas@customer.example", subject=alert,
                         message_id="<1@localhost>"))
    daemon.no_new_mail()
    assert [r["subject"] for r in daemon.query(
        "SELECT subject FROM messages ORDER BY id")] == ["disk full", "disk very full"]


def test_a_mail_with_thousands_of_cc_adds_at_most_twenty(daemon: Daemon) -> None:
    """Finding 7: 2 000 Cc addresses on a new ticket gave 2 001 participants, and one agent
    reply then queued 2 001 relays in one transaction."""
    flood = mail(sender=CUSTOMER, Cc=", ".join(f"p{n}@customer.example" for n in range(2000)))
    daemon.send(flood)
    note = next(m for m in daemon.new_mail(2) if m["To"] == "alice@example.com")

    assert len(participants(daemon, 1)) == 21  # the requester and 20
    assert any(e.startswith("participants limited: 1980 more") for e in daemon.events(1))
    daemon.send(reply_to(note, sender="alice@example.com", body="Looking into it."))
    assert len(daemon.new_mail(21)) == 21


def test_a_huge_body_reaches_agents_as_a_bounded_excerpt(tmp_path: Path) -> None:
    """Finding 8: a 24 MB body produced notifications of about 50 MB each. Notifications
    carry an excerpt of at most `notification_excerpt_bytes` and a `supportd show` hint."""
    daemon = Daemon(tmp_path, free_port(), edits=(
        ("auto_mail_limit = 3", "auto_mail_limit = 3\nnotification_excerpt_bytes = 4096"),))
    daemon.start()
    try:
        daemon.send(mail(sender=CUSTOMER, body="line of a long log\n" * 20_000))
        note = next(m for m in daemon.new_mail(2) if m["To"] == "alice@example.com")
        text = body_text(note)
        assert 4096 < len(text.encode()) < 8192
        assert "`supportd show 1` has the whole mail" in text
        stored = daemon.query("SELECT body FROM messages WHERE ticket_id = 1")[0]["body"]
        assert len(stored) > 300_000  # the ticket keeps all of it
    finally:
        daemon.stop()


def test_a_reply_to_a_command_error_mail_is_the_agents(daemon: Daemon) -> None:
    """Finding 9: an agent who answered a command-error mail was treated as unauthenticated:
    that mail's Reply-To must carry the agent's own token for the ticket."""
    _, note = open_ticket(daemon)
    daemon.send(reply_to(note, sender="alice@example.com", body="#stauts pending\n\nHi"))
    [error] = daemon.new_mail(1)
    assert error["To"] == "alice@example.com" and "#stauts" in body_text(error)
    assert error["Reply-To"] == note["Reply-To"]

    daemon.send(reply_to(error, sender="alice@example.com", body="#status pending\n\nHi Carol"))
    [relay] = daemon.new_mail(1)
    assert relay["To"] == CUSTOMER and daemon.ticket(1)["status"] == "pending"
