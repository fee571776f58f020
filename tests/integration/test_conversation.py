"""The whole conversation over SMTP against the real daemon: customer, agent, and back."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.integration.conftest import Daemon, body_text, free_port, mail, reply_to

CUSTOMER = "carol@customer.example"
FIRST_ID = "<first@customer.example>"


def open_ticket(daemon: Daemon) -> tuple[object, object]:
    """Carol writes in; returns (acknowledgement to Carol, notification to Alice)."""
    daemon.send(mail(sender=CUSTOMER, message_id=FIRST_ID))
    sent = {m["To"]: m for m in daemon.new_mail(2)}
    return sent[CUSTOMER], sent["alice@example.com"]


def test_new_mail_gets_acknowledgement_and_agent_notification(daemon: Daemon) -> None:
    ack, note = open_ticket(daemon)

    assert ack["Subject"] == "Re: [Support #1] Our app is down"
    assert ack["Auto-Submitted"] == "auto-replied"
    assert "ticket #1" in body_text(ack)  # type: ignore[arg-type]
    assert re.fullmatch(r"support\+1-[0-9a-f]{16}@example\.com", str(ack["Reply-To"]))
    assert ack["In-Reply-To"] == ack["References"] == FIRST_ID and ack["Message-ID"]
    assert "Hello, our app returns 502 since noon." in body_text(note)  # type: ignore[arg-type]
    assert note["Reply-To"] != ack["Reply-To"]  # the agent's token is their own
    ticket = daemon.ticket(1)
    assert (ticket["status"], ticket["requester"], ticket["group_name"], ticket["account"]) == (
        "new", CUSTOMER, "tier1", "Customer Corp")


def test_customer_reply_threads_by_in_reply_to_and_notifies_agent(daemon: Daemon) -> None:
    ack, _ = open_ticket(daemon)
    reply = mail(sender=CUSTOMER, subject="more details", body="It started after the deploy.")
    reply["In-Reply-To"] = ack["Message-ID"]

    daemon.send(reply)

    [note] = daemon.new_mail(1)
    assert note["To"] == "alice@example.com"
    assert "It started after the deploy." in body_text(note)
    assert daemon.query("SELECT count(*) AS n FROM tickets")[0]["n"] == 1
    assert len(daemon.query("SELECT * FROM messages WHERE ticket_id = 1")) == 2


def test_agent_reply_is_relayed_without_quote_and_commands_apply(daemon: Daemon) -> None:
    _, note = open_ticket(daemon)
    answer = reply_to(note, sender="alice@example.com", body=(
        "#status pending\n#priority high\n\nHi Carol, we restarted the router; please retry.\n\n"
        "Alice\n\nOn Thu, 26 Nov 2026 at 10:00, Example Support <support@example.com> wrote:\n"
        "> New ticket #1 from carol@customer.example\n> Hello, our app returns 502.\n"))

    daemon.send(answer)

    [relay] = daemon.new_mail(1)
    text = body_text(relay)
    assert relay["To"] == CUSTOMER
    assert "we restarted the router" in text
    assert "wrote:" not in text and "> " not in text and "#status" not in text
    assert "waiting for your reply" in text  # the status notice rides along
    assert relay["Auto-Submitted"] is None  # a person wrote it
    assert relay["References"].startswith(FIRST_ID)  # threads under Carol's first mail
    assert "Alice via Example Support" in str(relay["From"])
    ticket = daemon.ticket(1)
    assert (ticket["status"], ticket["priority"], ticket["assignee"]) == (
        "pending", "high", "alice@example.com")


def test_customer_reply_to_relay_reopens_pending_ticket(daemon: Daemon) -> None:
    _, note = open_ticket(daemon)
    daemon.send(reply_to(note, sender="alice@example.com", body="#status pending\n\nRetry?"))
    [relay] = daemon.new_mail(1)

    daemon.send(reply_to(relay, sender=CUSTOMER, body="Still broken."))

    [note2] = daemon.new_mail(1)
    assert note2["To"] == "alice@example.com"  # the assignee, not the whole group
    assert daemon.ticket(1)["status"] == "open"
    assert "status: pending -> open (customer replied)" in daemon.events(1)


def test_note_command_keeps_the_mail_internal(daemon: Daemon) -> None:
    _, note = open_ticket(daemon)

    daemon.send(reply_to(note, sender="alice@example.com",
                         body="#note\n#assign bob\nLooks like the DNS change."))

    assert daemon.no_new_mail() == []
    assert daemon.ticket(1)["assignee"] == "bob@example.com"
    [row] = daemon.query("SELECT kind, body FROM messages WHERE ticket_id = 1 AND kind = 'note'")
    assert row["body"] == "Looks like the DNS change."


def test_invalid_command_applies_nothing_and_tells_the_agent(daemon: Daemon) -> None:
    _, note = open_ticket(daemon)

    daemon.send(reply_to(note, sender="alice@example.com",
                         body="#status pending\n#stauts solved\n\nSee the attached log."))

    [error] = daemon.new_mail(1)
    assert error["To"] == "alice@example.com"
    assert "#stauts solved" in body_text(error)
    assert "unknown command #stauts" in body_text(error)
    ticket = daemon.ticket(1)
    assert (ticket["status"], ticket["assignee"]) == ("new", None)
    assert not daemon.query("SELECT 1 FROM outbox WHERE kind = 'relay'")


def test_forged_agent_mail_changes_nothing(daemon: Daemon) -> None:
    ack, _ = open_ticket(daemon)
    # From Alice's address but sent to the customer's token, without any authentication.
    forged = reply_to(ack, sender="alice@example.com", body="#status solved\n#assign me\nDone.")

    daemon.send(forged)

    assert daemon.no_new_mail() == []
    ticket = daemon.ticket(1)
    assert (ticket["status"], ticket["assignee"]) == ("new", None)
    assert any(e.startswith("unauthenticated:") for e in daemon.events(1))


def test_agent_authenticated_by_trusted_dkim_result(tmp_path: Path) -> None:
    """On a listener declared to sit behind the trusted MTA (here the loopback SMTP one)."""
    trusted = Daemon(tmp_path, free_port(), edits=(
        ("[smtp]\n", "[smtp]\ntrust_authentication_results = true\n"),))
    trusted.start()
    try:
        open_ticket(trusted)
        answer = mail(sender="alice@example.com", to="support@example.com",
                      subject="Re: [Support #1] Our app is down", body="#status solved\n\nFixed.",
                      Authentication_Results="mx.example.com; dkim=pass header.d=example.com")

        trusted.send(answer)

        [relay] = trusted.new_mail(1)
        assert relay["To"] == CUSTOMER and "Fixed." in body_text(relay)
        assert trusted.ticket(1)["status"] == "solved"
    finally:
        trusted.stop()


def test_dkim_result_from_untrusted_server_does_not_authenticate(daemon: Daemon) -> None:
    open_ticket(daemon)
    answer = mail(sender="alice@example.com", subject="Re: [Support #1] Our app is down",
                  body="#status solved\n\nFixed.",
                  Authentication_Results="evil.example; dkim=pass header.d=example.com")

    daemon.send(answer)

    assert daemon.no_new_mail() == []
    assert daemon.ticket(1)["status"] == "new"


def test_subject_tag_threads_only_for_people_on_the_ticket(daemon: Daemon) -> None:
    open_ticket(daemon)

    daemon.send(mail(sender=CUSTOMER, subject="Re: [Support #1] Our app is down", body="+1"))
    daemon.send(mail(sender="mallory@evil.example", subject="[Support #1] hijack", body="hi"))

    daemon.no_new_mail()
    rows = daemon.query("SELECT ticket_id, author FROM messages ORDER BY id")
    assert [(r["ticket_id"], r["author"]) for r in rows] == [
        (1, CUSTOMER), (1, CUSTOMER), (2, "mallory@evil.example")]


def test_real_client_replies_are_relayed_as_their_visible_text(
    daemon: Daemon, corpora: Path
) -> None:
    """Replies written by real mail clients (Outlook, iPhone, BlackBerry) reach the customer
    without the history they quote or their signature."""
    folder = corpora / "github-erp"
    expected = json.loads((folder / "expectations.json").read_text())["files"]
    samples = ["email_2_1.txt", "email_iPhone.txt", "email_BlackBerry.txt"]
    _, note = open_ticket(daemon)
    for name in samples:
        body = (folder / "test" / "emails" / name).read_text()
        daemon.send(reply_to(note, sender="alice@example.com", body=body))
        [relay] = daemon.new_mail(1)
        want = expected[name].get("visible_text") or expected[name]["visible_text_derived"]
        assert body_text(relay).strip() == want.strip(), name


def test_cli_lists_and_shows_tickets(daemon: Daemon) -> None:
    open_ticket(daemon)

    listing = daemon.cli("tickets", "--status", "new")
    shown = daemon.cli("show", "1")

    assert listing.returncode == 0 and "Our app is down" in listing.stdout
    assert "1 ticket(s)" in listing.stdout
    assert daemon.cli("tickets", "--status", "solved").stdout.strip().endswith("0 ticket(s)")
    assert shown.returncode == 0
    assert "Hello, our app returns 502 since noon." in shown.stdout
    assert "acknowledgement  to carol@customer.example" in shown.stdout
    assert daemon.cli("show", "99").returncode == 1


def test_web_form_mail_is_answered_at_its_reply_to(daemon: Daemon) -> None:
    daemon.send(mail(sender="no-reply@forms.example", Reply_To="Dave <dave@customer.example>",
                     subject="Form: billing question"))

    sent = {m["To"]: m for m in daemon.new_mail(2)}

    assert "dave@customer.example" in sent
    assert daemon.ticket(1)["requester"] == "dave@customer.example"
    assert daemon.ticket(1)["account"] == "Customer Corp"


def test_agent_commands_still_run_after_many_command_errors(daemon: Daemon) -> None:
    """The hourly limit on automatic mail must not lock an agent out of their tickets."""
    _, note = open_ticket(daemon)
    for typo in ("#stauts open", "#priorty high", "#asign me", "#grop experts"):
        daemon.send(reply_to(note, sender="alice@example.com", body=typo))
        daemon.new_mail(1)

    daemon.send(reply_to(note, sender="alice@example.com", body="#status solved\n\nFixed."))

    [relay] = daemon.new_mail(1)
    assert relay["To"] == CUSTOMER
    assert daemon.ticket(1)["status"] == "solved"
