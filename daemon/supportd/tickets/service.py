"""Service: one inbox row through parse -> classify -> thread -> apply, in one transaction.

What a decision means is decided here and only here: who is told what, which status moves,
which mails are queued. The steps before it are pure; the store writes what this decides.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from typing import Any

from supportd.clock import Clock
from supportd.config import Config
from supportd.mail.auth import (
    TokenMatch,
    make_token,
    sender_is_authenticated,
    token_address,
    token_for_address,
    token_in_address,
)
from supportd.mail.classify import Decision, classify
from supportd.mail.parse import ParsedMail, is_mailbox, parse_mail
from supportd.mail.reply import strip_quoted_reply
from supportd.mail.thread import ThreadFacts, subject_tag, thread_message
from supportd.outbound.compose import Headers, compose_mail, new_message_id
from supportd.outbound.templates import Renderer
from supportd.store.sqlite import InboxRow, QueuedMail, Store, Tx, store_unavailable
from supportd.tickets.commands import (
    Assign,
    CommandError,
    ParsedCommands,
    SetGroup,
    SetPriority,
    SetStatus,
    parse_commands,
)
from supportd.tickets.lifecycle import (
    IllegalMove,
    after_agent_reply,
    after_customer_reply,
    check_move,
)
from supportd.tickets.model import Status, Ticket

log = logging.getLogger("supportd.tickets")

AGENT_NOTICES = ("new_ticket", "customer_reply")
# Mails into one ticket per hour before it is treated as a loop: people rarely write 20.
TICKET_MAIL_LIMIT = 20
STATUS_NOTICES = {
    Status.PENDING: "We have answered and are waiting for your reply: just answer this mail.",
    Status.SOLVED: "We consider this ticket solved. If anything is still wrong, just reply "
                   "and it will be reopened.",
    Status.OPEN: "This ticket is open again; we are working on it.",
}


@dataclass(frozen=True)
class Outcome:
    inbox_id: int
    ticket_id: int | None
    summary: str
    failed: bool = False
    retry: bool = False  # the store could not write (disk full): the row stays new


@dataclass(frozen=True)
class _Incoming:
    """One inbox row, parsed, with what we know about its author."""

    row: InboxRow
    mail: ParsedMail
    sender: str
    answer_to: str  # where automatic answers go: Reply-To if any, else the sender
    token: TokenMatch | None
    is_agent: bool  # an authenticated agent
    unauthenticated_agent: bool  # an agent's address, but not proven
    decision: Decision


class TicketService:
    def __init__(self, config: Config, store: Store, clock: Clock, renderer: Renderer) -> None:
        self.config, self.store, self.clock, self.renderer = config, store, clock, renderer
        self.agent_names = {a.email: a.name for a in config.agents}
        self.support_addresses = frozenset(config.support.addresses)
        tag = rf"\[{re.escape(config.support.subject_prefix)} #\d+\]"
        # Reply prefixes and our own tag, as many as there are, at the start of a subject.
        self._subject_prefixes = re.compile(
            rf"^(\s*((re|fw|fwd|aw|sv|antw)\s*:|{tag})\s*)+", re.IGNORECASE)

    async def process(self, inbox_id: int) -> Outcome:
        """Process one inbox row; a failure marks it failed with the error, raw mail kept."""
        row = await self.store.inbox_row(inbox_id)
        if row is None:
            return Outcome(inbox_id, None, "no such inbox row")
        return (await self.process_batch([row]))[0]

    async def process_batch(self, rows: Sequence[InboxRow], *,
                            budget: float = float("inf")) -> list[Outcome]:
        """Process inbox rows in one transaction (one fsync for all), each in its own savepoint:
        a mail that raises is rolled back alone and marked failed, raw mail kept. Stops after
        `budget` seconds, or sooner when another writer waits for the lock: the outcomes of
        the first rows only.
        The whole batch is one call on the store's writer thread, not a hop per statement."""
        try:
            outcomes = await self.store.write(partial(self._process_rows, rows=rows,
                                                      budget=budget))
        except Exception as error:
            if not store_unavailable(error):
                raise
            # Not the mails' fault: nothing was written, so they are simply tried again.
            message = f"{type(error).__name__}: {error}"
            log.warning("inbox=%d..%d store unavailable, will retry: %s", rows[0].id,
                        rows[-1].id, message)
            return [Outcome(rows[0].id, None, f"store unavailable: {message}", retry=True)]
        for outcome in outcomes:
            if not outcome.failed:
                log.info("ticket=%s inbox=%d %s", outcome.ticket_id, outcome.inbox_id,
                         outcome.summary)
        return outcomes

    def _process_rows(self, tx: Tx, *, rows: Sequence[InboxRow],
                      budget: float) -> list[Outcome]:
        deadline = time.perf_counter() + budget
        states = tx.inbox_states(row.id for row in rows)
        outcomes: list[Outcome] = []
        for row in rows:
            # Commit what is done when the budget is spent or another writer waits (intake).
            if outcomes and (time.perf_counter() > deadline or self.store.writer_wanted()):
                break
            if states.get(row.id) == "done":
                outcomes.append(Outcome(row.id, row.ticket_id, "already processed"))
                continue
            outcomes.append(self._process_one(tx, row))
        return outcomes

    def _process_one(self, tx: Tx, row: InboxRow) -> Outcome:
        tx.savepoint()
        try:
            outcome = self._apply(tx, row, parse_mail(row.raw))
            tx.mark_inbox_done(row.id, outcome.ticket_id or 0)
        except Exception as error:
            if store_unavailable(error):
                raise  # SQLite may have rolled back the whole transaction: retry the batch
            tx.rollback_to_savepoint()
            message = f"{type(error).__name__}: {error}"
            log.exception("inbox=%d processing failed: %s", row.id, message)
            tx.mark_inbox_failed(row.id, message)
            return Outcome(row.id, None, f"failed: {message}", failed=True)
        tx.release_savepoint()
        return outcome

    def _apply(self, tx: Tx, row: InboxRow, mail: ParsedMail) -> Outcome:
        now = self.clock.now()
        sender = mail.from_addr.email if mail.from_addr else (row.mail_from or "")
        token = self._token(row, mail)
        agent_address = sender in self.config.agent_by_email
        proven = agent_address and (
            (token is not None and token.agent == sender)
            or sender_is_authenticated(sender, mail.headers,
                                       self.config.support.trusted_authserv_ids)
        )
        # RFC 5322 §3.6.2: answers go to Reply-To when there is one (web forms, no-reply robots).
        answer_to = next((a.email for a in mail.reply_to if not self._is_ours(a.email)), sender)
        decision = classify(
            mail, envelope_sender=row.mail_from,
            own_addresses=self.support_addresses,
            # An agent's own mail is never rate-limited: a typo reply answers a person's
            # deliberate act, and robots among agents are caught by the per-ticket limit.
            auto_mails_last_hour=0 if proven else tx.automatic_mails_since(
                answer_to, now - timedelta(hours=1)),
            auto_mail_limit=self.config.support.auto_mail_limit,
        )
        if decision.answerable and not is_mailbox(answer_to):
            decision = Decision(False, "no_address", f"no address to answer: {answer_to!r}")
        incoming = _Incoming(row, mail, sender, answer_to, token, proven,
                             agent_address and not proven, decision)
        ticket = self._thread(tx, incoming)
        if ticket is not None and ticket.status == Status.CLOSED:
            return self._new_ticket(tx, incoming, follow_up_of=ticket.id)
        if ticket is None:
            return self._new_ticket(tx, incoming, follow_up_of=None)
        recent = tx.incoming_mails_since(ticket.id, now - timedelta(hours=1))
        if incoming.decision.answerable and recent >= TICKET_MAIL_LIMIT:
            # Two autoresponders without RFC 3834 headers (customer's and agent's) would
            # otherwise ping-pong relays and notifications through this ticket forever.
            incoming = replace(incoming, decision=Decision(
                False, "ticket_loop", f"{recent} mails into this ticket in the last hour "
                f"(limit {TICKET_MAIL_LIMIT}): a mail loop is likely"))
        if incoming.is_agent and incoming.decision.answerable:
            return self._agent_mail(tx, incoming, ticket)
        # Automatic mail from an agent (an out-of-office) is stored, never run or relayed.
        return self._customer_reply(tx, incoming, ticket)

    def _token(self, row: InboxRow, mail: ParsedMail) -> TokenMatch | None:
        # The envelope is what we were sent to; the headers matter where there is none (IMAP).
        addresses = [*row.rcpt_to, *(a.email for a in (*mail.to, *mail.cc))]
        matches = (token_for_address(address, self.support_addresses,
                                     self.config.support.hmac_key,
                                     self.config.agent_by_email) for address in addresses)
        return next(filter(None, matches), None)

    def _thread(self, tx: Tx, incoming: _Incoming) -> Ticket | None:
        """The ticket this mail belongs to, or None for a new one."""
        mail = incoming.mail
        by_id = tx.tickets_for_message_ids((*mail.in_reply_to, *mail.references))
        tagged = subject_tag(mail.subject, self.config.support.subject_prefix)
        people: frozenset[str] = frozenset()
        if tagged is not None and (t := tx.ticket(tagged)) is not None:
            people = frozenset(
                {p.email for p in tx.participants(tagged)} | set(self.agent_names)
                | {t.requester})
        facts = ThreadFacts(
            token_ticket=incoming.token.ticket_id if incoming.token else None,
            tickets_by_message_id=by_id, tagged_ticket_people=people,
        )
        result = thread_message(mail, incoming.sender, facts, self.config.support.subject_prefix)
        if result.ticket_id is None:
            return None
        return tx.ticket(result.ticket_id)  # None for a valid token of a ticket that is gone

    # -- the three kinds of mail ---------------------------------------------------------

    def _new_ticket(self, tx: Tx, incoming: _Incoming, *,
                    follow_up_of: int | None) -> Outcome:
        now, mail, sender = self.clock.now(), incoming.mail, incoming.sender
        requester = incoming.answer_to
        ticket = tx.create_ticket(
            subject=self._clean_subject(mail.subject), group=self.config.support.default_group,
            requester=requester, account=self.config.account_for(requester), at=now)
        tx.add_participant(ticket.id, requester, "requester")
        for cc in self._cc_addresses(mail, requester):
            tx.add_participant(ticket.id, cc, "cc")
        how = f"follow-up of closed ticket #{follow_up_of}" if follow_up_of else "new mail"
        tx.add_event(ticket.id, now, sender, "created", f"ticket created from {how} "
                     f"(inbox {incoming.row.id}, {incoming.row.source})")
        self._store_message(tx, incoming, ticket, body=mail.text)
        if not incoming.decision.answerable:
            return Outcome(incoming.row.id, ticket.id,
                           f"new ticket, not answered: {incoming.decision.reason}")
        self._queue(tx, ticket, "acknowledgement", to=requester, automatic=True,
                    auto_submitted="auto-replied", answering=mail)
        notice = self._notify_agents(tx, ticket, "new_ticket", incoming, body=mail.text)
        return Outcome(incoming.row.id, ticket.id,
                       f"new ticket from {sender}, acknowledged, {notice}")

    def _customer_reply(self, tx: Tx, incoming: _Incoming, ticket: Ticket) -> Outcome:
        now, sender = self.clock.now(), incoming.sender
        participants = {p.email for p in tx.participants(ticket.id)}
        body = strip_quoted_reply(incoming.mail.text)
        self._store_message(tx, incoming, ticket, body=body)
        if not incoming.decision.answerable:
            return Outcome(incoming.row.id, ticket.id,
                           f"added, not answered: {incoming.decision.reason}")
        if incoming.unauthenticated_agent:
            return Outcome(incoming.row.id, ticket.id,
                           "unauthenticated mail from an agent address stored; nothing changed")
        if sender not in participants:
            tx.add_participant(ticket.id, sender, "cc")
            tx.add_event(ticket.id, now, sender, "participant", f"{sender} joined as cc")
        status = after_customer_reply(ticket.status)
        if status != ticket.status:
            tx.add_event(ticket.id, now, sender, "status",
                         f"{ticket.status} -> {status} (customer replied)")
            ticket = replace(ticket, status=status)
        ticket = replace(ticket, updated_at=now)
        tx.save_ticket(ticket)
        notice = self._notify_agents(tx, ticket, "customer_reply", incoming, body=body)
        return Outcome(incoming.row.id, ticket.id, f"reply from {sender}, {notice}")

    def _agent_mail(self, tx: Tx, incoming: _Incoming, ticket: Ticket) -> Outcome:
        now, agent = self.clock.now(), incoming.sender
        parsed = parse_commands(incoming.mail.text, sender=agent, agents=self.agent_names,
                                groups=frozenset(g.name for g in self.config.groups))
        changed, errors = self._command_changes(ticket, parsed)
        if errors:
            tx.add_event(ticket.id, now, agent, "commands refused",
                         "; ".join(str(e) for e in errors))
            self._queue(tx, ticket, "command_error", to=agent, automatic=True,
                        auto_submitted="auto-replied", answering=incoming.mail,
                        extra={"errors": errors})
            return Outcome(incoming.row.id, ticket.id,
                           f"agent {agent}: {len(errors)} command error(s), nothing applied")
        body = strip_quoted_reply(parsed.body)
        public = bool(body) and not parsed.is_note
        if public:
            if not any(isinstance(c, SetStatus) for c in parsed.commands):
                changed = replace(changed, status=after_agent_reply(changed.status))
            if changed.assignee is None:
                changed = replace(changed, assignee=agent)
        self._store_message(tx, incoming, ticket, body=body,
                            kind="agent" if public else "note")
        for event in _differences(ticket, changed):
            tx.add_event(ticket.id, now, agent, *event)
        changed = replace(changed, updated_at=now)
        tx.save_ticket(changed)
        notice = None
        # New -> Open is our bookkeeping; the customer hears of moves that concern them.
        if changed.status != ticket.status and (ticket.status, changed.status) != (
                Status.NEW, Status.OPEN):
            notice = STATUS_NOTICES.get(changed.status)
        requester_and_cc = [p.email for p in tx.participants(ticket.id)
                            if is_mailbox(p.email)]
        if public:
            for to in requester_and_cc:
                self._queue(tx, changed, "relay", to=to, automatic=False,
                            auto_submitted=None, answering=None,
                            from_name=f"{self.agent_names[agent]} via "
                                      f"{self.config.support.name}",
                            extra={"body": body, "status_notice": notice})
        elif notice and changed.status in (Status.PENDING, Status.SOLVED):
            for to in requester_and_cc:
                self._queue(tx, changed, "status_changed", to=to, automatic=True,
                            auto_submitted="auto-generated", answering=None,
                            extra={"status_notice": notice})
        what = "relayed to the customer" if public else "internal note" if body else "no text"
        return Outcome(incoming.row.id, ticket.id,
                       f"agent {agent}: {len(parsed.commands)} command(s), {what}")

    def _command_changes(
        self, ticket: Ticket, parsed: ParsedCommands
    ) -> tuple[Ticket, list[CommandError]]:
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

    # -- effects -------------------------------------------------------------------------

    def _store_message(self, tx: Tx, incoming: _Incoming, ticket: Ticket, *, body: str,
                       kind: str | None = None) -> None:
        now, mail = self.clock.now(), incoming.mail
        if kind is None:
            kind = "customer" if incoming.decision.answerable else "machine"
        tx.add_message(
            ticket_id=ticket.id, inbox_id=incoming.row.id, kind=kind, author=incoming.sender,
            subject=mail.subject, body=body, at=now,
            attachments=[(a.filename, a.content_type, a.size, a.sha256)
                         for a in mail.attachments])
        if mail.message_id:
            tx.remember_message_id(mail.message_id, ticket.id)
        if not incoming.decision.answerable:
            tx.add_event(ticket.id, now, "supportd", "not answered",
                         f"{incoming.decision.check}: {incoming.decision.reason}")
        if incoming.unauthenticated_agent:
            tx.add_event(ticket.id, now, "supportd", "unauthenticated",
                         f"mail from agent address {incoming.sender} is not authenticated "
                         "(no agent reply token, no trusted DKIM/DMARC pass): handled as "
                         "customer mail, commands not run")

    def _notify_agents(self, tx: Tx, ticket: Ticket, kind: str, incoming: _Incoming,
                       *, body: str) -> str:
        if ticket.assignee and ticket.assignee in self.agent_names:
            agents = [ticket.assignee]
        else:
            agents = [a.email for a in self.config.agents_in(ticket.group)]
        for agent in agents:
            self._queue(tx, ticket, kind, to=agent, automatic=False,
                        auto_submitted="auto-generated", answering=incoming.mail,
                        agent=agent, extra={
                            "author": incoming.sender, "body": body,
                            "attachments": [f"{a.filename or '(no name)'} "
                                            f"({a.content_type}, {a.size} bytes)"
                                            for a in incoming.mail.attachments]})
        return f"{len(agents)} agent(s) notified" if agents else "no agent in the group to notify"

    def _queue(
        self, tx: Tx, ticket: Ticket, kind: str, *, to: str, automatic: bool,
        auto_submitted: str | None, answering: ParsedMail | None, agent: str | None = None,
        from_name: str | None = None, extra: dict[str, Any] | None = None,
    ) -> None:
        """Render and queue one mail in this transaction (transactional outbox)."""
        now, support = self.clock.now(), self.config.support
        address = support.addresses[0]
        subject = f"[{support.subject_prefix} #{ticket.id}] {ticket.subject}"
        if kind not in AGENT_NOTICES:  # the customer's conversation: an answer to them
            subject = "Re: " + subject
        context: dict[str, Any] = {
            "ticket": ticket, "support_name": support.name, "prefix": support.subject_prefix,
            "subject": subject, **(extra or {}),
        }
        message_id = new_message_id(ticket.id, address.rpartition("@")[2])
        if answering is not None:
            in_reply_to = answering.message_id
            references = (*answering.references[-10:], *filter(None, [in_reply_to]))
        else:  # not an answer to one mail: thread under the ticket's first and latest mails
            known = tx.thread_message_ids(ticket.id)
            in_reply_to = known[-1] if known else None
            references = tuple(dict.fromkeys(known[:1] + known[-9:]))
        raw = compose_mail(
            Headers(
                from_name=from_name or support.name, from_addr=address, to=to, subject=subject,
                reply_to=token_address(address, make_token(support.hmac_key, ticket.id, agent)),
                message_id=message_id,
                in_reply_to=in_reply_to,
                references=references, auto_submitted=auto_submitted, loop_address=address,
                date=now,
            ),
            self.renderer.render(kind, context),
        )
        tx.queue_mail(QueuedMail(ticket.id, kind, automatic, address, to, message_id, raw), now)
        tx.remember_message_id(message_id, ticket.id)

    def _clean_subject(self, subject: str) -> str:
        """The ticket's subject: reply prefixes and our own tag taken off."""
        cleaned = self._subject_prefixes.sub("", subject)
        return cleaned.strip()[:200] or "(no subject)"

    def _is_ours(self, address: str) -> bool:
        support = self.support_addresses
        return address in support or token_in_address(address, support) is not None

    def _cc_addresses(self, mail: ParsedMail, requester: str) -> list[str]:
        """Others the customer wrote to: they stay on the conversation (not us, not agents)."""
        return list(dict.fromkeys(
            a.email for a in (*mail.to, *mail.cc)
            if a.email != requester and a.email not in self.agent_names
            and not self._is_ours(a.email)
        ))


def _differences(before: Ticket, after: Ticket) -> list[tuple[str, str]]:
    """Event rows (kind, detail) for what changed between two versions of a ticket."""
    events = []
    for kind, old, new in (("status", before.status, after.status),
                           ("assignee", before.assignee, after.assignee),
                           ("priority", before.priority, after.priority),
                           ("group", before.group, after.group)):
        if old != new:
            events.append((kind, f"{old or 'nobody'} -> {new or 'nobody'}"))
    return events
