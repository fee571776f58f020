"""Decide: every decision about a mail or a ticket event, as a plan, without a store.

Incoming values come from `prepare()` on raw mail bytes, as in the daemon; the facts a
decision needs (tickets, participants, counters) are written out by hand for each case.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supportd.config import Config, load_config
from supportd.mail.auth import make_token, token_address
from supportd.outbound.templates import Renderer
from supportd.store.api import InboxRow
from supportd.tickets.decide import (
    STATUS_NOTICES,
    TICKET_MAIL_LIMIT,
    Facts,
    MailPlan,
    Plan,
    TicketEvent,
    TicketFacts,
    bounded_excerpt,
    decide,
    decide_event,
)
from supportd.tickets.model import Participant, Priority, Status, Ticket
from supportd.tickets.prepare import Incoming, prepare

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SUPPORT = "support@example.com"
CAROL = "carol@customer.example"  # the requester of ticket 2
ERIN = "erin@customer.example"  # a cc of ticket 2
ALICE, BOB, DAN = "alice@example.com", "bob@example.com", "dan@example.com"  # agents
MALLORY = "mallory@evil.example"
EXCERPT_BYTES = 1024
CONFIG = """
[support]
addresses = ["support@example.com"]
hmac_key_file = "hmac.key"
auto_mail_limit = 3
max_participants_per_mail = 20
notification_excerpt_bytes = {excerpt}
trusted_authserv_ids = ["mx.example.com"]
[smtp]
lmtp_listen = "127.0.0.1:2424"
lmtp_trust_authentication_results = true
[store]
path = "s.sqlite3"
[outbound]
templates = "{templates}"
[[groups]]
name = "tier1"
[[groups]]
name = "tier2"
[[agents]]
email = "alice@example.com"
name = "Alice"
groups = ["tier1"]
[[agents]]
email = "bob@example.com"
name = "Bob"
groups = ["tier1"]
[[agents]]
email = "dan@example.com"
name = "Dan"
groups = ["tier2"]
[[accounts]]
name = "Customer Inc"
domains = ["customer.example"]
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """One config for the module: loading it (and making its HMAC key) is the slow part."""
    path = tmp_path_factory.mktemp("decide") / "supportd.toml"
    path.write_text(CONFIG.format(excerpt=EXCERPT_BYTES, templates=REPO / "templates"))
    return load_config(path)


# -- building the inputs ----------------------------------------------------------------------


def raw(sender: str, body: str = "Our app is down.", *, subject: str = "App down",
        message_id: str = "m1@customer.example", to: str = SUPPORT, cc: Iterable[str] = (),
        reply_to: str | None = None, in_reply_to: str | None = None,
        references: Iterable[str] = (), headers: Iterable[str] = ()) -> bytes:
    lines = [*headers, f"From: {sender}", f"To: {to}", f"Subject: {subject}",
             f"Message-ID: <{message_id}>", "Date: Thu, 26 Nov 2026 11:59:00 +0000"]
    if cc := list(cc):
        lines.append(f"Cc: {', '.join(cc)}")
    if reply_to:
        lines.append(f"Reply-To: {reply_to}")
    if in_reply_to:
        lines.append(f"In-Reply-To: <{in_reply_to}>")
    if references := list(references):
        lines.append("References: " + " ".join(f"<{r}>" for r in references))
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n") + "\r\n").encode()


def incoming(config: Config, mail: bytes, *, rcpt: str = SUPPORT, source: str = "smtp",
             mail_from: str | None = "bounce@customer.example") -> Incoming:
    row = InboxRow(id=7, received_at=NOW, source=source, mail_from=mail_from,
                   rcpt_to=(rcpt,), raw=mail, state="new", error=None, attempts=0,
                   ticket_id=None)
    return prepare(row, config)


def token(config: Config, ticket_id: int, agent: str | None = None) -> str:
    """The reply-token address of `ticket_id` (the customer's, or `agent`'s)."""
    return token_address(SUPPORT, make_token(config.support.hmac_key, ticket_id, agent))


def ticket(ticket_id: int = 2, status: Status = Status.OPEN, *, requester: str = CAROL,
           assignee: str | None = None, group: str = "tier1") -> Ticket:
    return Ticket(id=ticket_id, subject="App down", status=status, priority=Priority.NORMAL,
                  group=group, assignee=assignee, requester=requester,
                  account="Customer Inc", created_at=NOW, updated_at=NOW)


def on_file(t: Ticket, *, ccs: Iterable[str] = (ERIN,), mails: int = 0) -> TicketFacts:
    people = (Participant(t.requester, "requester"), *(Participant(c, "cc") for c in ccs))
    return TicketFacts(ticket=t, participants=people,
                       thread_ids=(f"first{t.id}@customer.example",), mails_last_hour=mails)


def facts(*found: TicketFacts, automatic: dict[str, int] | None = None,
          taken: bool = False) -> Facts:
    return Facts(now=NOW, tickets={f.ticket.id: f for f in found},
                 tickets_by_message_id={f.thread_ids[0]: f.ticket.id for f in found},
                 automatic_mails_last_hour=automatic or {}, message_id_taken=taken)


def kinds(plan: Plan) -> list[str]:
    return [kind for _, kind, _ in plan.events]


def detail(plan: Plan, kind: str) -> str:
    [found] = [d for _, k, d in plan.events if k == kind]
    return found


def sent(plan: Plan, template: str) -> list[MailPlan]:
    return [m for m in plan.mails if m.template == template]


AUTO_REPLY = ("Auto-Submitted: auto-replied",)


# -- a new ticket ---------------------------------------------------------------------------


def test_new_mail_creates_a_new_ticket_in_the_default_group(config: Config) -> None:
    plan = decide(incoming(config, raw(f"Carol <{CAROL}>")), facts(), config)
    assert plan.creates and plan.ticket is not None
    assert (plan.ticket.status, plan.ticket.group, plan.ticket.requester, plan.ticket.account,
            plan.ticket.subject) == (Status.NEW, "tier1", CAROL, "Customer Inc", "App down")
    assert plan.participants == (Participant(CAROL, "requester"),)
    assert plan.message is not None and plan.message.kind == "customer"
    assert plan.remember_message_id == "m1@customer.example"
    assert "ticket created from new mail (inbox 7, smtp)" in detail(plan, "created")


def test_new_ticket_is_acknowledged_to_the_requester_with_the_customer_token(
        config: Config) -> None:
    plan = decide(incoming(config, raw(CAROL)), facts(), config)
    [ack] = sent(plan, "acknowledgement")
    assert (ack.to, ack.automatic, ack.auto_submitted, ack.token_agent) == (
        CAROL, True, "auto-replied", None)
    assert ack.answering is not None and ack.answering.message_id == "m1@customer.example"


def test_new_ticket_notifies_the_agents_of_its_group_each_with_their_own_token(
        config: Config) -> None:
    plan = decide(incoming(config, raw(CAROL)), facts(), config)
    notices = sent(plan, "new_ticket")
    assert sorted(m.to for m in notices) == [ALICE, BOB]  # Dan is in tier2
    assert all(m.token_agent == m.to and not m.automatic for m in notices)
    assert notices[0].extra["author"] == CAROL and notices[0].extra["omitted"] == 0


def test_reply_to_makes_the_requester_and_gets_the_acknowledgement(config: Config) -> None:
    plan = decide(incoming(config, raw("noreply@forms.example", reply_to=CAROL)), facts(),
                  config)
    assert plan.ticket is not None and plan.ticket.requester == CAROL
    assert [m.to for m in sent(plan, "acknowledgement")] == [CAROL]


def test_cc_of_the_first_mail_become_participants_with_an_event_each(config: Config) -> None:
    mail = raw(CAROL, cc=[ERIN, ALICE, "support+x@example.com"])
    plan = decide(incoming(config, mail), facts(), config)
    # An agent and our own addresses are never participants.
    assert plan.participants == (Participant(CAROL, "requester"), Participant(ERIN, "cc"))
    assert detail(plan, "participant") == (
        f"{ERIN} was added as cc by {CAROL} (in the Cc of the first mail)")
    [notice, *_] = sent(plan, "new_ticket")
    assert notice.extra["added"] == [f"{ERIN} was added to this ticket by {CAROL}"]


def test_cc_beyond_the_participant_cap_are_kept_out_with_an_event(config: Config) -> None:
    ccs = [f"cc{n}@customer.example" for n in range(25)]
    plan = decide(incoming(config, raw(CAROL, cc=ccs)), facts(), config)
    assert [p.email for p in plan.participants] == [CAROL, *ccs[:20]]
    assert kinds(plan).count("participant") == 20
    assert detail(plan, "participants limited") == (
        "5 more addresses in To/Cc not added (limit 20 a mail); they are kept in the message")


def test_a_reply_to_a_closed_ticket_opens_a_follow_up_ticket(config: Config) -> None:
    closed = on_file(ticket(status=Status.CLOSED))
    plan = decide(incoming(config, raw(CAROL, "Broken again."), rcpt=token(config, 2)),
                  facts(closed), config)
    assert plan.creates and plan.ticket_id == 0
    assert plan.ticket is not None and plan.ticket.status == Status.NEW
    assert "follow-up of closed ticket #2" in detail(plan, "created")
    assert sent(plan, "acknowledgement")


def test_an_automatic_new_mail_makes_a_ticket_and_answers_nobody(config: Config) -> None:
    plan = decide(incoming(config, raw(CAROL, headers=AUTO_REPLY)), facts(), config)
    assert plan.creates and plan.mails == ()
    assert plan.message is not None and plan.message.kind == "machine"
    assert detail(plan, "not answered").startswith("auto_submitted: ")


# -- a customer's reply -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.PENDING, Status.SOLVED])
def test_a_customer_reply_reopens_a_pending_or_solved_ticket(config: Config,
                                                            status: Status) -> None:
    found = on_file(ticket(status=status))
    plan = decide(incoming(config, raw(CAROL, "Still broken."), rcpt=token(config, 2)),
                  facts(found), config)
    assert plan.ticket_id == 2 and plan.ticket is not None
    assert plan.ticket.status == Status.OPEN and plan.ticket.updated_at == NOW
    assert detail(plan, "status") == f"{status} -> open (customer replied)"


def test_a_customer_reply_to_an_open_ticket_leaves_its_status(config: Config) -> None:
    plan = decide(incoming(config, raw(CAROL, "More detail."), rcpt=token(config, 2)),
                  facts(on_file(ticket())), config)
    assert plan.ticket is not None and plan.ticket.status == Status.OPEN
    assert "status" not in kinds(plan) and plan.participants == ()


def test_a_customer_reply_notifies_only_the_assignee_when_there_is_one(config: Config) -> None:
    found = on_file(ticket(assignee=BOB))
    plan = decide(incoming(config, raw(CAROL, "More detail."), rcpt=token(config, 2)),
                  facts(found), config)
    assert [(m.template, m.to, m.token_agent) for m in plan.mails] == [
        ("customer_reply", BOB, BOB)]


def test_a_customer_reply_notice_carries_the_reply_without_the_quoted_history(
        config: Config) -> None:
    body = ("It works now, thanks.\n\nOn Thu, 26 Nov 2026, Support <support@example.com> "
            "wrote:\n> We have restarted the server.\n")
    plan = decide(incoming(config, raw(CAROL, body), rcpt=token(config, 2)),
                  facts(on_file(ticket())), config)
    assert [m.extra["body"] for m in plan.mails] == ["It works now, thanks."] * 2
    assert plan.message is not None and plan.message.body == "It works now, thanks."


def test_a_non_participant_replying_by_token_joins_as_cc_with_an_explicit_event(
        config: Config) -> None:
    frank = "frank@customer.example"
    plan = decide(incoming(config, raw(frank, "I see it too."), rcpt=token(config, 2)),
                  facts(on_file(ticket())), config)
    assert plan.participants == (Participant(frank, "cc"),)
    assert detail(plan, "participant") == f"{frank} was added as cc by {frank} (replied by " \
                                          "reply token)"
    assert {m.to for m in plan.mails} == {ALICE, BOB}
    assert all(m.extra["added"] == [f"{frank} was added to this ticket by {frank}"]
               for m in plan.mails)


def test_a_participant_replying_is_not_added_again(config: Config) -> None:
    plan = decide(incoming(config, raw(ERIN, "Same here."), rcpt=token(config, 2)),
                  facts(on_file(ticket())), config)
    assert plan.participants == () and "participant" not in kinds(plan)
    assert all(m.extra["added"] == [] for m in plan.mails)


def test_a_customer_auto_reply_is_stored_as_machine_with_the_reason_and_changes_nothing(
        config: Config) -> None:
    found = on_file(ticket(status=Status.PENDING))
    plan = decide(incoming(config, raw(CAROL, "I am away.", headers=AUTO_REPLY),
                           rcpt=token(config, 2)), facts(found), config)
    assert plan.ticket_id == 2 and plan.ticket is None and plan.mails == ()
    assert plan.message is not None and plan.message.kind == "machine"
    assert detail(plan, "not answered").startswith("auto_submitted: ")
    assert plan.summary.startswith("added, not answered: ")


def test_the_per_recipient_limit_never_holds_back_a_customer_reply(config: Config) -> None:
    """Finding 3a: acknowledgement and status notices used up Carol's automatic mails."""
    found = on_file(ticket(status=Status.SOLVED))
    plan = decide(incoming(config, raw(CAROL, "Production is down."), rcpt=token(config, 2)),
                  facts(found, automatic={CAROL: 3}), config)
    assert plan.ticket is not None and plan.ticket.status == Status.OPEN
    assert {m.to for m in sent(plan, "customer_reply")} == {ALICE, BOB}
    assert "not answered" not in kinds(plan)


def test_a_customer_reply_at_the_ticket_loop_limit_is_stored_with_the_event(
        config: Config) -> None:
    found = on_file(ticket(status=Status.PENDING), mails=TICKET_MAIL_LIMIT)
    plan = decide(incoming(config, raw(CAROL, "Ping."), rcpt=token(config, 2)),
                  facts(found), config)
    assert plan.ticket is None and plan.mails == ()
    assert detail(plan, "not answered") == (
        f"ticket_loop: {TICKET_MAIL_LIMIT} mails into this ticket in the last hour "
        f"(limit {TICKET_MAIL_LIMIT}): a mail loop is likely")


def test_a_customer_reply_just_below_the_ticket_loop_limit_is_processed(config: Config) -> None:
    found = on_file(ticket(status=Status.PENDING), mails=TICKET_MAIL_LIMIT - 1)
    plan = decide(incoming(config, raw(CAROL, "Ping."), rcpt=token(config, 2)),
                  facts(found), config)
    assert plan.ticket is not None and plan.ticket.status == Status.OPEN
    assert len(plan.mails) == 2


# -- mail from an agent's address without proof ---------------------------------------------


def forged_alice(config: Config, **kwargs: object) -> Incoming:
    """Finding 1: `From: alice` with the ticket's subject tag, no token."""
    return incoming(config, raw(ALICE, "#status solved\n\nDone.", subject="Re: [Support #2] x",
                                message_id="plant@evil.example", **kwargs))  # type: ignore[arg-type]


def test_an_unauthenticated_agent_mail_is_stored_on_the_tagged_ticket_and_changes_nothing(
        config: Config) -> None:
    plan = decide(forged_alice(config), facts(on_file(ticket())), config)
    assert plan.ticket_id == 2 and plan.ticket is None and plan.mails == ()
    assert plan.message is not None and plan.message.kind == "unverified"
    assert "is not authenticated" in detail(plan, "unauthenticated")


def test_an_unauthenticated_agent_mail_adds_nobody(config: Config) -> None:
    plan = decide(forged_alice(config, cc=[MALLORY]), facts(on_file(ticket())), config)
    assert plan.participants == () and "participant" not in kinds(plan)


def test_an_unauthenticated_agent_mails_message_id_is_not_remembered(config: Config) -> None:
    plan = decide(forged_alice(config), facts(on_file(ticket())), config)
    assert plan.remember_message_id is None


def test_an_unauthenticated_agent_mail_opening_a_ticket_adds_nobody_and_is_no_key(
        config: Config) -> None:
    mail = raw(ALICE, "Please add me.", cc=[MALLORY], message_id="plant@evil.example")
    plan = decide(incoming(config, mail), facts(), config)
    assert plan.creates and plan.participants == (Participant(ALICE, "requester"),)
    assert "is not authenticated" in detail(plan, "unauthenticated")
    # Otherwise mallory's In-Reply-To: <plant@evil.example> makes her a cc of this ticket.
    assert plan.remember_message_id is None


def test_an_agents_personal_token_used_by_another_agent_proves_nothing(config: Config) -> None:
    mail = raw(BOB, "#status solved\n\nDone.")
    plan = decide(incoming(config, mail, rcpt=token(config, 2, ALICE)),
                  facts(on_file(ticket())), config)
    assert plan.ticket is None and "unauthenticated" in kinds(plan)


AUTH_RESULTS = ("Authentication-Results: mx.example.com; dkim=pass header.d=example.com",)


def test_authentication_results_prove_an_agent_on_the_listener_behind_the_mta(
        config: Config) -> None:
    mail = raw(ALICE, "#status pending\n\nAsked.", subject="Re: [Support #2] x",
               headers=AUTH_RESULTS)
    plan = decide(incoming(config, mail, source="lmtp"), facts(on_file(ticket())), config)
    assert plan.ticket is not None and plan.ticket.status == Status.PENDING


def test_authentication_results_written_by_the_sender_prove_nothing(config: Config) -> None:
    """Finding 2: the same header over the public SMTP listener is the sender's own."""
    mail = raw(ALICE, "#status pending\n\nAsked.", subject="Re: [Support #2] x",
               headers=AUTH_RESULTS)
    plan = decide(incoming(config, mail, source="smtp"), facts(on_file(ticket())), config)
    assert plan.ticket is None and "unauthenticated" in kinds(plan)


# -- an authenticated agent -------------------------------------------------------------------


def from_alice(config: Config, body: str, ticket_id: int = 2) -> Incoming:
    return incoming(config, raw(ALICE, body, message_id="a1@example.com"),
                    rcpt=token(config, ticket_id, ALICE))


def test_agent_commands_are_applied_with_an_event_each(config: Config) -> None:
    plan = decide(from_alice(config, "#status pending\n#priority high\n#group tier2\n\nAsked."),
                  facts(on_file(ticket())), config)
    assert plan.ticket is not None
    assert (plan.ticket.status, plan.ticket.priority, plan.ticket.group) == (
        Status.PENDING, Priority.HIGH, "tier2")
    assert (ALICE, "status", "open -> pending") in plan.events
    assert (ALICE, "priority", "normal -> high") in plan.events
    assert (ALICE, "group", "tier1 -> tier2") in plan.events
    assert plan.remember_message_id == "a1@example.com"


def test_an_agents_text_is_relayed_to_the_requester_and_every_cc(config: Config) -> None:
    plan = decide(from_alice(config, "#priority high\n\nWe restarted it."),
                  facts(on_file(ticket())), config)
    relays = sent(plan, "relay")
    assert sorted(m.to for m in relays) == [CAROL, ERIN] and len(plan.mails) == 2
    assert all((m.automatic, m.auto_submitted, m.token_agent, m.from_name) ==
               (False, None, None, "Alice via Support") for m in relays)
    assert relays[0].extra["body"] == "We restarted it."  # without the command lines
    assert plan.message is not None and plan.message.kind == "agent"


def test_an_agent_answering_a_new_ticket_opens_it_takes_it_and_sends_no_status_notice(
        config: Config) -> None:
    plan = decide(from_alice(config, "Looking into it."),
                  facts(on_file(ticket(status=Status.NEW))), config)
    assert plan.ticket is not None
    assert (plan.ticket.status, plan.ticket.assignee) == (Status.OPEN, ALICE)
    assert [m.extra["status_notice"] for m in plan.mails] == [None, None]


def test_an_agents_status_change_puts_the_status_notice_in_the_relay(config: Config) -> None:
    plan = decide(from_alice(config, "#status solved\n\nFixed."),
                  facts(on_file(ticket())), config)
    assert [m.extra["status_notice"] for m in sent(plan, "relay")] == [
        STATUS_NOTICES[Status.SOLVED]] * 2


def test_an_agents_commands_without_text_send_the_customer_a_status_notice(
        config: Config) -> None:
    plan = decide(from_alice(config, "#status pending"), facts(on_file(ticket())), config)
    assert plan.ticket is not None and plan.ticket.status == Status.PENDING
    notices = sent(plan, "status_changed")
    assert sorted(m.to for m in notices) == [CAROL, ERIN] and len(plan.mails) == 2
    assert all(m.automatic and m.auto_submitted == "auto-generated" for m in notices)


def test_an_agents_note_is_stored_internal_and_relayed_to_nobody(config: Config) -> None:
    plan = decide(from_alice(config, "#note\nCustomer is on the old plan."),
                  facts(on_file(ticket())), config)
    assert plan.mails == ()
    assert plan.message is not None
    assert (plan.message.kind, plan.message.body) == ("note", "Customer is on the old plan.")
    assert plan.ticket is not None and plan.ticket.assignee is None  # a note takes nothing


def test_an_agents_command_error_applies_nothing(config: Config) -> None:
    plan = decide(from_alice(config, "#status frozen\n#priority high\n\nDone."),
                  facts(on_file(ticket())), config)
    assert plan.ticket is None and plan.participants == ()
    assert not sent(plan, "relay") and plan.remember_message_id is None
    assert "#status takes one of open, pending, solved" in detail(plan, "commands refused")


def test_a_command_error_mail_answers_the_agent_with_the_agents_own_token(
        config: Config) -> None:
    """Finding 9: a reply to the command-error mail must authenticate the agent."""
    plan = decide(from_alice(config, "#status frozen\n\nDone."), facts(on_file(ticket())),
                  config)
    [error] = plan.mails
    assert (error.template, error.to, error.token_agent, error.automatic) == (
        "command_error", ALICE, ALICE, True)
    assert error.extra["errors"] == [{"line": "#status frozen",
                                      "message": "#status takes one of open, pending, solved"}]


def test_an_illegal_status_command_is_a_command_error(config: Config) -> None:
    plan = decide(from_alice(config, "#status pending\n\nAgain."),
                  facts(on_file(ticket(status=Status.SOLVED))), config)
    assert plan.ticket is None and [m.template for m in plan.mails] == ["command_error"]
    assert "a solved ticket cannot become pending" in detail(plan, "commands refused")


def test_an_agents_auto_reply_is_stored_and_never_run(config: Config) -> None:
    mail = raw(ALICE, "#status solved\n\nI am on holiday.", headers=AUTO_REPLY)
    plan = decide(incoming(config, mail, rcpt=token(config, 2, ALICE)),
                  facts(on_file(ticket())), config)
    assert plan.ticket is None and plan.mails == () and plan.participants == ()
    assert plan.message is not None and plan.message.kind == "machine"


def test_an_agent_mail_at_the_ticket_loop_limit_is_stored_as_machine_with_the_event(
        config: Config) -> None:
    found = on_file(ticket(), mails=TICKET_MAIL_LIMIT)
    plan = decide(from_alice(config, "#status solved\n\nFixed."), facts(found), config)
    assert plan.ticket is None and plan.mails == ()
    assert plan.message is not None and plan.message.kind == "machine"
    assert detail(plan, "not answered").startswith(f"ticket_loop: {TICKET_MAIL_LIMIT} mails")


# -- the per-recipient limit on automatic mail ------------------------------------------------


def test_the_auto_mail_limit_holds_back_only_the_acknowledgement(config: Config) -> None:
    """Finding 3a/3b: the ticket is made and the agents are told; only the answer waits."""
    plan = decide(incoming(config, raw(CAROL, "Production is down.")),
                  facts(automatic={CAROL: 3}), config)
    assert plan.creates and not sent(plan, "acknowledgement")
    assert sorted(m.to for m in sent(plan, "new_ticket")) == [ALICE, BOB]
    assert detail(plan, "not answered") == (
        f"acknowledgement to {CAROL} held back: rate_limited: 3 automatic mails to it in "
        "the last hour (limit 3)")


def test_the_auto_mail_limit_counts_for_the_recipient_only(config: Config) -> None:
    """Finding 3b: forged Reply-To mails used up Dave's budget, not Carol's."""
    plan = decide(incoming(config, raw(CAROL)),
                  facts(automatic={"dave@customer.example": 3, CAROL: 2}), config)
    assert [m.to for m in sent(plan, "acknowledgement")] == [CAROL]


# -- a reused Message-ID --------------------------------------------------------------------


def test_a_reused_message_id_is_stored_marked_and_not_remembered(config: Config) -> None:
    """Finding 5: a different mail under a known Message-ID is kept, never a threading key."""
    plan = decide(incoming(config, raw(CAROL, message_id="1@localhost")), facts(taken=True),
                  config)
    assert plan.creates and plan.message is not None
    assert plan.remember_message_id is None
    assert "Message-ID <1@localhost> was already used" in detail(plan, "message-id reused")


def test_a_reply_under_a_reused_message_id_is_processed_but_not_remembered(
        config: Config) -> None:
    plan = decide(incoming(config, raw(CAROL, "More.", message_id="1@localhost"),
                           rcpt=token(config, 2)), facts(on_file(ticket()), taken=True), config)
    assert plan.ticket_id == 2 and len(plan.mails) == 2
    assert plan.remember_message_id is None and "message-id reused" in kinds(plan)


# -- the notification excerpt ---------------------------------------------------------------


def test_bounded_excerpt_keeps_a_text_that_fits() -> None:
    assert bounded_excerpt("short", 5) == "short"


def test_bounded_excerpt_cuts_at_a_character_within_the_limit() -> None:
    excerpt = bounded_excerpt("é" * 600, 1001)  # two bytes each
    assert excerpt == "é" * 500 and len(excerpt.encode()) <= 1001


def test_a_long_mails_notice_carries_a_bounded_excerpt_and_how_much_is_left_out(
        config: Config) -> None:
    body = "x" * 5000
    plan = decide(incoming(config, raw(CAROL, body)), facts(), config)
    [notice, *_] = sent(plan, "new_ticket")
    assert notice.extra["body"] == "x" * EXCERPT_BYTES
    assert notice.extra["omitted"] == 5000 + 1 - EXCERPT_BYTES  # the body and its line end


def test_a_cut_notice_renders_the_supportd_show_hint(config: Config) -> None:
    plan = decide(incoming(config, raw(CAROL, "y" * 3000)), facts(), config)
    [notice, *_] = sent(plan, "new_ticket")
    assert plan.ticket is not None
    values = {"id": 5, "subject": plan.ticket.subject, "status": "new", "priority": "normal",
              "group": "tier1", "assignee": None, "requester": CAROL, "account": None}
    text = Renderer(config.outbound.templates).render("new_ticket", {
        "ticket": values, "support_name": "Support", "prefix": "Support",
        "subject": "[Support #5] App down", **notice.extra}).text
    assert f"[... {3000 + 1 - EXCERPT_BYTES} more bytes not shown: `supportd show 5` has the " \
           "whole mail]" in text
    assert "y" * (EXCERPT_BYTES + 1) not in text


# -- threading --------------------------------------------------------------------------------


def three_tickets() -> Facts:
    return facts(*(on_file(ticket(n)) for n in (2, 3, 4)))


def test_a_token_beats_references_and_the_subject_tag(config: Config) -> None:
    mail = raw(CAROL, "Hi.", subject="Re: [Support #4] App down",
               in_reply_to="first3@customer.example")
    plan = decide(incoming(config, mail, rcpt=token(config, 2)), three_tickets(), config)
    assert plan.ticket_id == 2


def test_references_beat_the_subject_tag(config: Config) -> None:
    mail = raw(CAROL, "Hi.", subject="Re: [Support #4] App down",
               references=["first3@customer.example"])
    plan = decide(incoming(config, mail), three_tickets(), config)
    assert plan.ticket_id == 3


def test_a_subject_tag_from_a_participant_threads(config: Config) -> None:
    mail = raw(ERIN, "Hi.", subject="Re: [Support #4] App down")
    plan = decide(incoming(config, mail), three_tickets(), config)
    assert plan.ticket_id == 4 and not plan.creates


def test_a_subject_tag_from_a_stranger_opens_a_new_ticket(config: Config) -> None:
    mail = raw(MALLORY, "Reopen please.", subject="Re: [Support #2] App down")
    plan = decide(incoming(config, mail), three_tickets(), config)
    assert plan.creates and plan.ticket is not None and plan.ticket.requester == MALLORY


def test_a_token_for_a_ticket_not_in_the_facts_opens_a_new_ticket(config: Config) -> None:
    plan = decide(incoming(config, raw(CAROL), rcpt=token(config, 9)), three_tickets(), config)
    assert plan.creates


def test_a_forged_token_threads_nowhere(config: Config) -> None:
    forged = "support+2-0123456789abcdef@example.com"
    plan = decide(incoming(config, raw(CAROL, to=forged), rcpt=forged), three_tickets(), config)
    assert plan.creates


# -- events from other doors ------------------------------------------------------------------


def event(**changes: object) -> TicketEvent:
    return TicketEvent(ticket_id=2, actor="operator", **changes)  # type: ignore[arg-type]


def nothing_written(plan: Plan) -> bool:
    return (plan.ticket, plan.message, plan.events, plan.mails, plan.participants) == (
        None, None, (), (), ())


def test_an_event_makes_a_legal_status_move_with_an_event(config: Config) -> None:
    found = on_file(ticket())
    plan = decide_event(event(status=Status.PENDING), found, facts(found), config)
    assert plan.errors == () and plan.ticket is not None
    assert (plan.ticket.status, plan.ticket.updated_at) == (Status.PENDING, NOW)
    assert plan.events == (("operator", "status", "open -> pending"),)


def test_an_event_with_an_illegal_status_move_is_refused_and_writes_nothing(
        config: Config) -> None:
    found = on_file(ticket())
    plan = decide_event(event(status=Status.CLOSED), found, facts(found), config)
    assert [e.line for e in plan.errors] == ["status closed"]
    assert "cannot become closed" in plan.errors[0].message
    assert nothing_written(plan)


def test_an_event_naming_an_unknown_agent_is_refused_with_the_agents(config: Config) -> None:
    found = on_file(ticket())
    plan = decide_event(event(assignee="eve@example.com"), found, facts(found), config)
    assert [e.message for e in plan.errors] == [
        f"no agent 'eve@example.com'; agents: {ALICE}, {BOB}, {DAN}"]
    assert nothing_written(plan)


def test_an_event_naming_an_unknown_group_is_refused_with_the_groups(config: Config) -> None:
    found = on_file(ticket())
    plan = decide_event(event(group="tier9"), found, facts(found), config)
    assert [e.message for e in plan.errors] == ["no group 'tier9'; groups: tier1, tier2"]
    assert nothing_written(plan)


def test_one_refused_field_refuses_the_whole_event(config: Config) -> None:
    found = on_file(ticket())
    plan = decide_event(event(status=Status.SOLVED, group="tier9", note="x"), found,
                        facts(found), config)
    assert len(plan.errors) == 1 and nothing_written(plan)


def test_an_event_for_a_missing_ticket_is_refused(config: Config) -> None:
    plan = decide_event(event(status=Status.SOLVED), None, facts(), config)
    assert [str(e) for e in plan.errors] == ["'ticket 2': no such ticket"]
    assert nothing_written(plan)


def test_an_event_with_only_a_note_stores_the_note_and_tells_nobody(config: Config) -> None:
    found = on_file(ticket())
    plan = decide_event(event(note="Called the customer."), found, facts(found), config)
    assert plan.message is not None
    assert (plan.message.kind, plan.message.author, plan.message.body, plan.message.inbox_id) == (
        "note", "operator", "Called the customer.", None)
    assert plan.events == () and plan.mails == () and plan.errors == ()
    assert plan.ticket is not None and replace(plan.ticket, updated_at=NOW) == found.ticket


def test_an_event_solving_a_ticket_queues_the_customers_status_mail(config: Config) -> None:
    found = on_file(ticket())
    plan = decide_event(event(status=Status.SOLVED), found, facts(found), config)
    assert sorted(m.to for m in sent(plan, "status_changed")) == [CAROL, ERIN]
    assert len(plan.mails) == 2
    assert all((m.automatic, m.auto_submitted, m.extra["status_notice"]) ==
               (True, "auto-generated", STATUS_NOTICES[Status.SOLVED]) for m in plan.mails)


def test_an_event_assigning_an_agent_tells_the_customer_nothing(config: Config) -> None:
    found = on_file(ticket())
    plan = decide_event(event(assignee=DAN, group="tier2"), found, facts(found), config)
    assert plan.ticket is not None and (plan.ticket.assignee, plan.ticket.group) == (DAN, "tier2")
    assert plan.events == (("operator", "assignee", f"nobody -> {DAN}"),
                           ("operator", "group", "tier1 -> tier2"))
    assert plan.mails == ()


def test_an_event_that_changes_nothing_plans_nothing(config: Config) -> None:
    found = on_file(ticket())
    plan = decide_event(event(status=Status.OPEN, group="tier1"), found, facts(found), config)
    assert plan.summary == "ticket #2: nothing to change"
    assert plan.errors == () and nothing_written(plan)
