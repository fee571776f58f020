"""Service: inbox rows and ticket events through prepare -> decide -> apply.

`prepare` (parsing, classifying, stripping) runs before the transaction; inside it, the
service reads the `Facts` a decision needs, `decide` returns a `Plan` (pure), and `apply`
writes it: the only code here that holds the write lock. Mails are queued as effects whose
payload the outbox worker renders and composes when it sends them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from supportd.clock import Clock
from supportd.config import Config
from supportd.mail.auth import make_token, token_address
from supportd.outbound.compose import new_message_id
from supportd.store.api import Effect, InboxRow, Store, StoreUnavailable, Tx
from supportd.tickets.decide import (
    AGENT_NOTICES,
    Facts,
    MailPlan,
    Plan,
    TicketEvent,
    TicketFacts,
    decide,
    decide_event,
)
from supportd.tickets.model import Ticket
from supportd.tickets.prepare import Incoming, prepare

log = logging.getLogger("supportd.tickets")

# Kinds of stored message that count toward a ticket's hourly mail limit (decide.py).
COUNTED_KINDS = ("customer", "agent", "note")
# Tickets a mail's signals (token, references, subject tag) may point at, looked up at most.
MAX_CANDIDATES = 5


@dataclass(frozen=True)
class Outcome:
    inbox_id: int
    ticket_id: int | None
    summary: str
    failed: bool = False
    retry: bool = False  # the store could not write (disk full): the row stays new


@dataclass(frozen=True)
class _Prepared:
    row: InboxRow
    incoming: Incoming | None
    error: str | None  # why it could not be prepared


class TicketService:
    def __init__(self, config: Config, store: Store, clock: Clock) -> None:
        self.config, self.store, self.clock = config, store, clock

    async def process(self, inbox_id: int) -> Outcome:
        """Process one inbox row; a failure marks it failed with the error, raw mail kept."""
        row = await self.store.inbox_row(inbox_id)
        if row is None:
            return Outcome(inbox_id, None, "no such inbox row")
        return (await self.process_batch([row]))[0]

    async def process_batch(self, rows: Sequence[InboxRow]) -> list[Outcome]:
        """Prepare the rows, then apply them in one transaction (one fsync for all), each in
        its own savepoint: a mail that raises is rolled back alone and marked failed, raw
        mail kept. When another writer waits (intake), the transaction ends early: the
        outcomes of the first rows only."""
        prepared = [self._prepare(row) for row in rows]
        try:
            outcomes = await self.store.write(lambda tx: self._apply_rows(tx, prepared))
        except StoreUnavailable as error:
            # Not the mails' fault: nothing was written, so they are simply tried again.
            log.warning("inbox=%d..%d store unavailable, will retry: %s", rows[0].id,
                        rows[-1].id, error)
            return [Outcome(rows[0].id, None, f"store unavailable: {error}", retry=True)]
        for outcome in outcomes:
            if not outcome.failed:
                log.info("ticket=%s inbox=%d %s", outcome.ticket_id, outcome.inbox_id,
                         outcome.summary)
        return outcomes

    def _prepare(self, row: InboxRow) -> _Prepared:
        try:
            return _Prepared(row, prepare(row, self.config), None)
        except Exception as error:
            log.exception("inbox=%d could not be read: %s", row.id, error)
            return _Prepared(row, None, f"{type(error).__name__}: {error}")

    def _apply_rows(self, tx: Tx, prepared: Sequence[_Prepared]) -> list[Outcome]:
        states = tx.inbox_states(p.row.id for p in prepared)
        outcomes: list[Outcome] = []
        for item in prepared:
            if outcomes and tx.others_waiting():
                break  # commit what is done: intake's 250s wait behind this transaction
            row = item.row
            if states.get(row.id) == "done":
                outcomes.append(Outcome(row.id, row.ticket_id, "already processed"))
                continue
            outcomes.append(self._apply_one(tx, item))
        return outcomes

    def _apply_one(self, tx: Tx, item: _Prepared) -> Outcome:
        row = item.row
        try:
            with tx.each():
                if item.incoming is None:
                    raise ValueError(item.error)
                plan = decide(item.incoming, self._facts(tx, item.incoming), self.config)
                ticket_id = self.apply(tx, plan)
                tx.mark_inbox_done(row.id, ticket_id)
        except StoreUnavailable:
            raise  # SQLite may have rolled back the whole transaction: retry the batch
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            log.exception("inbox=%d processing failed: %s", row.id, message)
            tx.mark_inbox_failed(row.id, message)
            return Outcome(row.id, None, f"failed: {message}", failed=True)
        return Outcome(row.id, ticket_id, plan.summary)

    async def change(self, event: TicketEvent) -> Plan:
        """Apply a change that did not come by mail (CLI, timer, web); a refused one writes
        nothing and says why in `errors`."""
        def work(tx: Tx) -> Plan:
            found = self._ticket_facts(tx, event.ticket_id, self.clock.now())
            plan = decide_event(event, found, self._common_facts(), self.config)
            if not plan.errors and plan.ticket is not None:
                self.apply(tx, plan)
            return plan
        plan = await self.store.write(work)
        if not plan.errors:
            log.info("ticket=%d %s by %s", event.ticket_id, plan.summary, event.actor)
        return plan

    # -- facts -----------------------------------------------------------------------------

    def _common_facts(self) -> Facts:
        return Facts(now=self.clock.now(), tickets={}, tickets_by_message_id={},
                     automatic_mails_last_hour={})

    def _facts(self, tx: Tx, incoming: Incoming) -> Facts:
        now = self.clock.now()
        by_id = tx.tickets_for_message_ids(incoming.references)
        candidates = [incoming.token.ticket_id if incoming.token else None, incoming.tagged,
                      *by_id.values()]
        tickets = {}
        for ticket_id in dict.fromkeys(filter(None, candidates[:MAX_CANDIDATES])):
            if (found := self._ticket_facts(tx, ticket_id, now)) is not None:
                tickets[ticket_id] = found
        since = now - timedelta(hours=1)
        message_id = incoming.mail.message_id
        return Facts(
            now=now, tickets=tickets, tickets_by_message_id=by_id,
            automatic_mails_last_hour={incoming.answer_to: tx.automatic_mails_since(
                incoming.answer_to, since)},
            message_id_taken=bool(message_id) and tx.message_id_known(message_id or ""))

    def _ticket_facts(self, tx: Tx, ticket_id: int, now: datetime) -> TicketFacts | None:
        ticket = tx.ticket(ticket_id)
        if ticket is None:
            return None
        return TicketFacts(
            ticket=ticket, participants=tuple(tx.participants(ticket_id)),
            thread_ids=tuple(tx.thread_message_ids(ticket_id)),
            mails_last_hour=tx.incoming_mails_since(ticket_id, now - timedelta(hours=1),
                                                    kinds=COUNTED_KINDS))

    # -- apply -----------------------------------------------------------------------------

    def apply(self, tx: Tx, plan: Plan) -> int:
        """Write `plan`; returns its ticket's id (0 when it names none)."""
        now = self.clock.now()
        ticket = plan.ticket
        if ticket is not None and plan.creates:
            ticket = tx.create_ticket(subject=ticket.subject, group=ticket.group,
                                      requester=ticket.requester, account=ticket.account, at=now)
        elif ticket is not None:
            tx.save_ticket(ticket)
        else:
            ticket = tx.ticket(plan.ticket_id)
        if ticket is None:
            return 0
        for participant in plan.participants:
            tx.add_participant(ticket.id, participant.email, participant.role)
        for actor, kind, detail in plan.events:
            tx.add_event(ticket.id, now, actor, kind, detail)
        if plan.message is not None:
            m = plan.message
            tx.add_message(ticket_id=ticket.id, inbox_id=m.inbox_id, kind=m.kind,
                           author=m.author, subject=m.subject, body=m.body, at=now,
                           attachments=m.attachments)
        if plan.remember_message_id:
            tx.remember_message_id(plan.remember_message_id, ticket.id)
        if plan.mails:
            thread = tx.thread_message_ids(ticket.id)
            for mail in plan.mails:
                self._queue(tx, ticket, mail, thread)
        return ticket.id

    def _queue(self, tx: Tx, ticket: Ticket, mail: MailPlan, thread: list[str]) -> None:
        """Queue one mail as an effect: everything the outbox needs to render and send it."""
        now, support = self.clock.now(), self.config.support
        address = support.addresses[0]
        subject = f"[{support.subject_prefix} #{ticket.id}] {ticket.subject}"
        if mail.template not in AGENT_NOTICES:  # the customer's conversation: an answer
            subject = "Re: " + subject
        message_id = new_message_id(ticket.id, address.rpartition("@")[2])
        if mail.answering is not None:
            in_reply_to = mail.answering.message_id
            references = [*mail.answering.references[-10:], *filter(None, [in_reply_to])]
        else:  # not an answer to one mail: thread under the ticket's first and latest mails
            in_reply_to = thread[-1] if thread else None
            references = list(dict.fromkeys(thread[:1] + thread[-9:]))
        payload = {
            "template": mail.template, "automatic": mail.automatic,
            "headers": {
                "from_name": mail.from_name or support.name, "from_addr": address,
                "to": mail.to, "subject": subject,
                "reply_to": token_address(address, make_token(support.hmac_key, ticket.id,
                                                              mail.token_agent)),
                "message_id": message_id, "in_reply_to": in_reply_to,
                "references": references, "auto_submitted": mail.auto_submitted,
                "loop_address": address, "date": now.isoformat(),
            },
            "context": {
                "ticket": _ticket_values(ticket), "support_name": support.name,
                "prefix": support.subject_prefix, "subject": subject, **mail.extra,
            },
        }
        tx.add_effect(Effect("mail", ticket.id, payload, now), at=now,
                      automatic_to=mail.to if mail.automatic else None)
        tx.remember_message_id(message_id, ticket.id)


def _ticket_values(ticket: Ticket) -> dict[str, Any]:
    """The ticket as templates see it (`ticket.id`, `ticket.status` ...), JSON-able."""
    return {"id": ticket.id, "subject": ticket.subject, "status": str(ticket.status),
            "priority": str(ticket.priority), "group": ticket.group,
            "assignee": ticket.assignee, "requester": ticket.requester,
            "account": ticket.account}

