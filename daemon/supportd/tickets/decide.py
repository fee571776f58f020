"""Decide: what one incoming mail or one ticket event does, as a `Plan` (pure).

Every door into a ticket comes here: a mail (`decide`), and an operator's or a timer's
change (`decide_event`). Both take what the store knows (`Facts`, read by the caller in the
transaction) and return a `Plan`: the ticket as it is to be, the participants, message and
events to add, and the mails to queue. `apply` writes a plan; nothing here touches the store,
the clock or the network, so every decision is tested as a function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from supportd.config import Config
from supportd.mail.parse import ParsedMail, is_mailbox
from supportd.mail.thread import ThreadFacts, thread_message
from supportd.tickets.commands import (
    Assign,
    CommandError,
    ParsedCommands,
    SetGroup,
    SetPriority,
    SetStatus,
)
from supportd.tickets.lifecycle import (
    IllegalMove,
    after_agent_reply,
    after_customer_reply,
    check_move,
)
from supportd.tickets.model import Participant, Priority, Status, Ticket
from supportd.tickets.prepare import Incoming

AGENT_NOTICES = ("new_ticket", "customer_reply")
# Mails into one ticket per hour before it is treated as a loop: people rarely write 20.
# Only mails that could be a loop partner's count: a participant's or an authenticated
# agent's, never a stranger's mail under an agent's address.
TICKET_MAIL_LIMIT = 20
STATUS_NOTICES = {
    Status.PENDING: "We have answered and are waiting for your reply: just answer this mail.",
    Status.SOLVED: "We consider this ticket solved. If anything is still wrong, just reply "
                   "and it will be reopened.",
    Status.OPEN: "This ticket is open again; we are working on it.",
}
SYSTEM = "supportd"


@dataclass(frozen=True)
class TicketFacts:
    ticket: Ticket
    participants: tuple[Participant, ...]
    thread_ids: tuple[str, ...]  # its Message-IDs, oldest first
    mails_last_hour: int  # counted mails into it in the last hour (TICKET_MAIL_LIMIT)

    @property
    def people(self) -> frozenset[str]:
        return frozenset({p.email for p in self.participants} | {self.ticket.requester})


@dataclass(frozen=True)
class Facts:
    """What the store knows that a decision needs, read in the deciding transaction."""

    now: datetime
    tickets: Mapping[int, TicketFacts]  # every ticket the mail could thread into
    tickets_by_message_id: Mapping[str, int]
    automatic_mails_last_hour: Mapping[str, int]  # recipient -> automatic mails to it
    message_id_taken: bool = False  # another mail already uses this mail's Message-ID


@dataclass(frozen=True)
class MailPlan:
    """One mail to queue; `apply` gives it its Message-ID, token and subject."""

    template: str
    to: str
    automatic: bool  # counts toward the recipient's hourly limit
    auto_submitted: str | None  # RFC 3834 value; None for a person's text (relay)
    token_agent: str | None = None  # whose reply token goes in Reply-To: None, the customer's
    from_name: str | None = None
    answering: ParsedMail | None = None  # the mail it answers, for In-Reply-To
    extra: Mapping[str, Any] = field(default_factory=dict)  # template values, JSON-able


@dataclass(frozen=True)
class StoredMessage:
    kind: str  # customer | agent | note | machine | unverified
    author: str
    subject: str
    body: str
    inbox_id: int | None
    attachments: tuple[tuple[str, str, int, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    summary: str
    ticket_id: int = 0  # the ticket it writes to; 0: the one it creates, or none
    ticket: Ticket | None = None  # the ticket as it is to be, if it changes; id 0: create it
    participants: tuple[Participant, ...] = ()  # to add
    message: StoredMessage | None = None
    remember_message_id: str | None = None  # makes it a threading key for this ticket
    events: tuple[tuple[str, str, str], ...] = ()  # (actor, kind, detail)
    mails: tuple[MailPlan, ...] = ()
    errors: tuple[CommandError, ...] = ()  # a refused event: nothing is written

    @property
    def creates(self) -> bool:
        return self.ticket is not None and self.ticket.id == 0


@dataclass(frozen=True)
class TicketEvent:
    """A change to a ticket from a door that is not mail: the CLI, a timer, a web click."""

    ticket_id: int
    actor: str
    status: Status | None = None
    assignee: str | None = None
    group: str | None = None
    priority: Priority | None = None
    note: str | None = None


def decide(incoming: Incoming, facts: Facts, config: Config) -> Plan:
    """The plan for one incoming mail."""
    ticket_id, via = _thread(incoming, facts, config)
    found = facts.tickets.get(ticket_id) if ticket_id is not None else None
    if found is None:
        return _new_ticket(incoming, facts, config, follow_up_of=None)
    if found.ticket.status == Status.CLOSED:
        return _new_ticket(incoming, facts, config, follow_up_of=found.ticket.id)
    if incoming.is_agent and incoming.decision.answerable:
        return _agent_mail(incoming, facts, config, found, via)
    # Automatic mail from an agent (an out-of-office) is stored, never run or relayed.
    return _customer_reply(incoming, facts, config, found, via)


def _thread(incoming: Incoming, facts: Facts, config: Config) -> tuple[int | None, str]:
    people: frozenset[str] = frozenset()
    if incoming.tagged is not None and (tagged := facts.tickets.get(incoming.tagged)):
        # An unproven agent's address threads here too, so that the ticket shows the attempt;
        # such a mail changes nothing, adds nobody and is never a threading key (_flags).
        people = tagged.people | frozenset(config.agent_by_email)
    token = incoming.token.ticket_id if incoming.token else None
    result = thread_message(
        incoming.mail, incoming.sender,
        ThreadFacts(token_ticket=token, tickets_by_message_id=facts.tickets_by_message_id,
                    tagged_ticket_people=people),
        config.support.subject_prefix)
    return result.ticket_id, result.via


# -- the three kinds of mail -----------------------------------------------------------------


def _new_ticket(incoming: Incoming, facts: Facts, config: Config, *,
                follow_up_of: int | None) -> Plan:
    mail, sender, requester = incoming.mail, incoming.sender, incoming.answer_to
    ticket = Ticket(id=0, subject=clean_subject(mail.subject, config.support.subject_prefix),
                    status=Status.NEW, priority=Priority.NORMAL,
                    group=config.support.default_group, assignee=None, requester=requester,
                    account=config.account_for(requester), created_at=facts.now,
                    updated_at=facts.now)
    how = f"follow-up of closed ticket #{follow_up_of}" if follow_up_of else "new mail"
    events = [(sender, "created", f"ticket created from {how} "
                                  f"(inbox {incoming.row.id}, {incoming.row.source})")]
    participants = [Participant(requester, "requester")]
    added: list[str] = []
    if not incoming.unauthenticated_agent:
        ccs = cc_addresses(mail, requester, config)
        limit = config.support.max_participants_per_mail
        added = ccs[:limit]
        participants += [Participant(cc, "cc") for cc in added]
        events += [(sender, "participant", f"{cc} was added as cc by {sender} "
                                           "(in the Cc of the first mail)") for cc in added]
        if len(ccs) > limit:
            events.append((SYSTEM, "participants limited",
                           f"{len(ccs) - limit} more addresses in To/Cc not added "
                           f"(limit {limit} a mail); they are kept in the message"))
    events += _flags(incoming, facts)
    plan = Plan(summary="", ticket=ticket, participants=tuple(participants),
                message=_message(incoming, mail.text),
                remember_message_id=_rememberable(incoming, facts), events=tuple(events))
    if not incoming.decision.answerable:
        return replace(plan, summary=f"new ticket, not answered: {incoming.decision.reason}")
    mails: list[MailPlan] = []
    acknowledgement = MailPlan("acknowledgement", requester, automatic=True,
                               auto_submitted="auto-replied", answering=mail)
    held = _over_limit(requester, facts, config)
    if held:
        plan = _add_events(plan, (SYSTEM, "not answered", f"acknowledgement to {held}"))
    else:
        mails.append(acknowledgement)
    notices = _agent_notices(ticket, "new_ticket", incoming, config, added=added)
    mails += notices
    what = "acknowledgement held back" if held else "acknowledged"
    return replace(plan, mails=tuple(mails),
                   summary=f"new ticket from {sender}, {what}, {_notified(notices)}")


def _customer_reply(incoming: Incoming, facts: Facts, config: Config, found: TicketFacts,
                    via: str) -> Plan:
    ticket, sender = found.ticket, incoming.sender
    counted = not incoming.unauthenticated_agent and incoming.decision.answerable
    plan = Plan(summary="", ticket_id=ticket.id, message=_message(incoming, incoming.body),
                events=tuple(_flags(incoming, facts)),
                remember_message_id=_rememberable(incoming, facts))
    if not incoming.decision.answerable:
        return replace(plan, summary=f"added, not answered: {incoming.decision.reason}")
    if incoming.unauthenticated_agent:
        return replace(plan, summary="unauthenticated mail from an agent address stored; "
                                     "nothing changed")
    if counted and (reason := _loop_likely(found)):
        return replace(_add_events(plan, (SYSTEM, "not answered", f"ticket_loop: {reason}")),
                       summary=f"added, not answered: {reason}")
    added: list[str] = []
    if sender not in found.people:
        added = [sender]
        plan = replace(plan, participants=(Participant(sender, "cc"),))
        plan = _add_events(plan, (sender, "participant",
                                  f"{sender} was added as cc by {sender} (replied by {via})"))
    status = after_customer_reply(ticket.status)
    if status != ticket.status:
        plan = _add_events(plan, (sender, "status",
                                  f"{ticket.status} -> {status} (customer replied)"))
    ticket = replace(ticket, status=status, updated_at=facts.now)
    notices = _agent_notices(ticket, "customer_reply", incoming, config, added=added)
    return replace(plan, ticket=ticket, mails=tuple(notices),
                   summary=f"reply from {sender}, {_notified(notices)}")


def _agent_mail(incoming: Incoming, facts: Facts, config: Config, found: TicketFacts,
                via: str) -> Plan:
    ticket, agent = found.ticket, incoming.sender
    parsed = incoming.commands
    assert parsed is not None  # prepared for every authenticated agent's answerable mail
    if reason := _loop_likely(found):
        return Plan(summary=f"added, not answered: {reason}", ticket_id=ticket.id,
                    message=_message(incoming, incoming.body, kind="machine"),
                    events=(*_flags(incoming, facts),
                            (SYSTEM, "not answered", f"ticket_loop: {reason}")))
    changed, errors = command_changes(ticket, parsed)
    if errors:
        return Plan(
            summary=f"agent {agent}: {len(errors)} command error(s), nothing applied",
            ticket_id=ticket.id,
            events=((agent, "commands refused", "; ".join(str(e) for e in errors)),),
            mails=(MailPlan("command_error", agent, automatic=True,
                            auto_submitted="auto-replied", token_agent=agent,
                            answering=incoming.mail,
                            extra={"errors": [{"line": e.line, "message": e.message}
                                              for e in errors]}),))
    body = incoming.body
    public = bool(body) and not parsed.is_note
    if public:
        if not any(isinstance(c, SetStatus) for c in parsed.commands):
            changed = replace(changed, status=after_agent_reply(changed.status))
        if changed.assignee is None:
            changed = replace(changed, assignee=agent)
    changed = replace(changed, updated_at=facts.now)
    plan = Plan(summary="", ticket_id=ticket.id, ticket=changed,
                message=_message(incoming, body, kind="agent" if public else "note"),
                remember_message_id=_rememberable(incoming, facts),
                events=(*_flags(incoming, facts),
                        *((agent, *e) for e in differences(ticket, changed))))
    mails = _customer_mails(ticket, changed, found, config, text=body if public else None,
                            agent=agent)
    what = "relayed to the customer" if public else "internal note" if body else "no text"
    return replace(plan, mails=mails,
                   summary=f"agent {agent}: {len(parsed.commands)} command(s), {what}")


def decide_event(event: TicketEvent, found: TicketFacts | None, facts: Facts,
                 config: Config) -> Plan:
    """The plan for a change that did not come by mail; refused (`errors`) if not allowed."""
    if found is None:
        return Plan(summary=f"no ticket #{event.ticket_id}",
                    errors=(CommandError(f"ticket {event.ticket_id}", "no such ticket"),))
    ticket, errors = found.ticket, []
    changed = ticket
    if event.status is not None:
        try:
            check_move(ticket.status, event.status)
        except IllegalMove as e:
            errors.append(CommandError(f"status {event.status}", str(e)))
        changed = replace(changed, status=event.status)
    if event.assignee is not None:
        if event.assignee not in config.agent_by_email:
            errors.append(CommandError(f"assign {event.assignee}",
                                       f"no agent {event.assignee!r}; agents: "
                                       f"{', '.join(sorted(config.agent_by_email))}"))
        changed = replace(changed, assignee=event.assignee)
    if event.group is not None:
        groups = sorted(g.name for g in config.groups)
        if event.group not in groups:
            errors.append(CommandError(f"group {event.group}",
                                       f"no group {event.group!r}; groups: {', '.join(groups)}"))
        changed = replace(changed, group=event.group)
    if event.priority is not None:
        changed = replace(changed, priority=event.priority)
    if errors:
        return Plan(summary=f"ticket #{ticket.id}: nothing changed", errors=tuple(errors))
    changed = replace(changed, updated_at=facts.now)
    note = None
    if event.note:
        note = StoredMessage("note", event.actor, "(note)", event.note, inbox_id=None)
    events = tuple((event.actor, *e) for e in differences(ticket, changed))
    if note is None and not events:
        return Plan(summary=f"ticket #{ticket.id}: nothing to change")
    return Plan(summary=f"ticket #{ticket.id}: {len(events)} change(s)"
                        + (", note added" if note else ""),
                ticket_id=ticket.id, ticket=changed, message=note, events=events,
                mails=_customer_mails(ticket, changed, found, config, text=None, agent=None))


# -- the parts of a plan -----------------------------------------------------------------------


def _customer_mails(before: Ticket, after: Ticket, found: TicketFacts, config: Config, *,
                    text: str | None, agent: str | None) -> tuple[MailPlan, ...]:
    """The agent's text relayed to requester and cc, or a status notice when they should hear."""
    notice = None
    # New -> Open is our bookkeeping; the customer hears of moves that concern them.
    if after.status != before.status and (before.status, after.status) != (
            Status.NEW, Status.OPEN):
        notice = STATUS_NOTICES.get(after.status)
    people = [p.email for p in found.participants if is_mailbox(p.email)]
    support = config.support
    if text is not None:
        name = config.agent_by_email[agent].name if agent else support.name
        return tuple(MailPlan("relay", to, automatic=False, auto_submitted=None,
                              from_name=f"{name} via {support.name}",
                              extra={"body": text, "status_notice": notice})
                     for to in people)
    if notice and after.status in (Status.PENDING, Status.SOLVED):
        return tuple(MailPlan("status_changed", to, automatic=True,
                              auto_submitted="auto-generated",
                              extra={"status_notice": notice}) for to in people)
    return ()


def _agent_notices(ticket: Ticket, kind: str, incoming: Incoming, config: Config, *,
                   added: list[str]) -> list[MailPlan]:
    if ticket.assignee and ticket.assignee in config.agent_by_email:
        agents = [ticket.assignee]
    else:
        agents = [a.email for a in config.agents_in(ticket.group)]
    text = incoming.body if kind == "customer_reply" else incoming.mail.text
    excerpt = bounded_excerpt(text, config.support.notification_excerpt_bytes)
    extra = {
        "author": incoming.sender, "body": excerpt,
        # the template says how much is left out, and that `supportd show` has it all
        "omitted": len(text.encode("utf-8")) - len(excerpt.encode("utf-8")),
        "attachments": [f"{a.filename or '(no name)'} ({a.content_type}, {a.size} bytes)"
                        for a in incoming.mail.attachments],
        "added": [f"{who} was added to this ticket by {incoming.sender}" for who in added],
    }
    return [MailPlan(kind, agent, automatic=False, auto_submitted="auto-generated",
                     token_agent=agent, answering=incoming.mail, extra=extra)
            for agent in agents]


def bounded_excerpt(text: str, limit: int) -> str:
    """`text`, or as much of it as fits in `limit` bytes of UTF-8, cut at a character."""
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")


def _message(incoming: Incoming, body: str, *, kind: str | None = None) -> StoredMessage:
    if kind is None:
        kind = ("unverified" if incoming.unauthenticated_agent
                else "customer" if incoming.decision.answerable else "machine")
    mail = incoming.mail
    return StoredMessage(kind, incoming.sender, mail.subject, body, inbox_id=incoming.row.id,
                         attachments=tuple((a.filename, a.content_type, a.size, a.sha256)
                                           for a in mail.attachments))


def _rememberable(incoming: Incoming, facts: Facts) -> str | None:
    """The mail's Message-ID as a threading key: never one another mail already uses, nor
    one from a mail that names an agent without proof (a stranger would plant the key her
    own replies then thread by)."""
    if facts.message_id_taken or incoming.unauthenticated_agent:
        return None
    return incoming.mail.message_id


def _flags(incoming: Incoming, facts: Facts) -> list[tuple[str, str, str]]:
    """Events that say how a mail was read: not answered, unauthenticated, reused ID."""
    events = []
    if not incoming.decision.answerable:
        events.append((SYSTEM, "not answered",
                       f"{incoming.decision.check}: {incoming.decision.reason}"))
    if incoming.unauthenticated_agent:
        events.append((SYSTEM, "unauthenticated",
                       f"mail from agent address {incoming.sender} is not authenticated "
                       "(no agent reply token, no trusted DKIM/DMARC pass): handled as "
                       "customer mail, commands not run, nobody added, not used for threading"))
    if incoming.mail.cut:  # a limit of parse bit: an agent should look at the raw mail
        events.append((SYSTEM, "not read whole",
                       "; ".join(incoming.mail.cut) + f"; the whole mail is kept raw as inbox "
                       f"{incoming.row.id}"))
    if facts.message_id_taken:
        events.append((SYSTEM, "message-id reused",
                       f"Message-ID <{incoming.mail.message_id}> was already used by another "
                       "mail: stored, but never used to thread other mail here"))
    return events


def _loop_likely(found: TicketFacts) -> str | None:
    """Why mail into this ticket is not answered now, or None: a person rarely writes 20
    mails an hour into one ticket, two autoresponders without RFC 3834 headers (the
    customer's and an agent's) ping-pong relays and notifications through it forever."""
    if found.mails_last_hour < TICKET_MAIL_LIMIT:
        return None
    return (f"{found.mails_last_hour} mails into this ticket in the last hour "
            f"(limit {TICKET_MAIL_LIMIT}): a mail loop is likely")


def _over_limit(recipient: str, facts: Facts, config: Config) -> str | None:
    """Why an automatic mail to `recipient` is held back now, or None if it may go.

    RFC 3834 §3.1.5: limit how often one address gets automatic responses."""
    sent = facts.automatic_mails_last_hour.get(recipient, 0)
    limit = config.support.auto_mail_limit
    if sent < limit:
        return None
    return (f"{recipient} held back: rate_limited: {sent} automatic mails to it in the last "
            f"hour (limit {limit})")


def _add_events(plan: Plan, *events: tuple[str, str, str]) -> Plan:
    return replace(plan, events=(*plan.events, *events))


def _notified(notices: list[MailPlan]) -> str:
    return f"{len(notices)} agent(s) notified" if notices else "no agent in the group to notify"


def command_changes(ticket: Ticket, parsed: ParsedCommands) -> tuple[Ticket, list[CommandError]]:
    """The ticket as an agent's commands make it, and the errors that refuse them all."""
    errors = list(parsed.errors)
    changed = ticket
    for command in parsed.commands:
        if isinstance(command, SetStatus):
            try:
                check_move(ticket.status, command.status)
            except IllegalMove as e:
                errors.append(CommandError(f"#status {command.status}", str(e)))
            changed = replace(changed, status=command.status)
        elif isinstance(command, Assign):
            changed = replace(changed, assignee=command.agent)
        elif isinstance(command, SetPriority):
            changed = replace(changed, priority=command.priority)
        elif isinstance(command, SetGroup):
            changed = replace(changed, group=command.group)
    return changed, errors


def differences(before: Ticket, after: Ticket) -> list[tuple[str, str]]:
    """Event rows (kind, detail) for what changed between two versions of a ticket."""
    events = []
    for kind, old, new in (("status", before.status, after.status),
                           ("assignee", before.assignee, after.assignee),
                           ("priority", before.priority, after.priority),
                           ("group", before.group, after.group)):
        if old != new:
            events.append((kind, f"{old or 'nobody'} -> {new or 'nobody'}"))
    return events


def clean_subject(subject: str, prefix: str) -> str:
    """The ticket's subject: reply prefixes and our own tag taken off."""
    tag = rf"\[{re.escape(prefix)} #\d+\]"
    cleaned = re.sub(rf"^(\s*((re|fw|fwd|aw|sv|antw)\s*:|{tag})\s*)+", "", subject,
                     flags=re.IGNORECASE)
    return cleaned.strip()[:200] or "(no subject)"


def cc_addresses(mail: ParsedMail, requester: str, config: Config) -> list[str]:
    """Others the customer wrote to: they stay on the conversation (not us, not agents)."""
    return list(dict.fromkeys(
        a.email for a in (*mail.to, *mail.cc)
        if a.email != requester and a.email not in config.agent_by_email
        and not config.addresses.is_ours(a.email)))
