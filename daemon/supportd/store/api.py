"""Store interface: what supportd may ask of its store, and what each call guarantees.

Everything outside `store/` talks to a `Store` (reads, and `write` to run one transaction)
and, inside a transaction, to a `Tx`. Rows come back as the frozen dataclasses below, never
as a driver's row type; the one error a caller handles is `StoreUnavailable` (the store
cannot write for now: disk full, I/O error, lock timeout), after which nothing of the
transaction was written and the work is simply tried again later.

Work is claimed, not just read: `claim_inbox` and `claim_due` mark rows as taken by one
runner (`claimed_by`) until a lease expires, so several workers, in one process or many,
never take the same row at once. A lease only saves duplicate work: a runner that lost its
lease (it stalled past the expiry) cannot apply a mail twice, because `apply` marks the
inbox row done in the same transaction and skips a row that is done already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from supportd.tickets.model import Participant, Ticket

T = TypeVar("T")
EffectKind = Literal["mail", "timer"]


class StoreUnavailable(Exception):
    """The store could not write for now (disk full, I/O error, locked): nothing was written."""


@dataclass(frozen=True)
class Counts:
    """What the daemon reports about itself: sd_notify STATUS, /metrics, /healthz."""

    mails_since: int                         # inbox rows received since the given time
    inbox_pending: dict[tuple[str, str], int]  # (source, state) -> rows not yet done
    tickets: dict[str, int]                  # status -> tickets
    outbox: dict[str, int]                   # queued | failed -> mails
    next_mail_due: datetime | None           # the earliest queued mail's next attempt

    @property
    def open_tickets(self) -> int:
        return sum(n for status, n in self.tickets.items() if status not in ("solved", "closed"))


@dataclass(frozen=True)
class Accepted:
    inbox_id: int
    duplicate: bool


@dataclass(frozen=True)
class ImapPosition:
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True)
class InboxRow:
    id: int
    received_at: datetime
    source: str
    mail_from: str | None
    rcpt_to: tuple[str, ...]
    raw: bytes
    state: str
    error: str | None
    attempts: int
    ticket_id: int | None


@dataclass(frozen=True)
class Effect:
    """Something to do beyond the store, decided in a transaction: a mail to send, a timer.

    `payload` is JSON-serialisable; for mail it is what `outbound.outbox` needs to render and
    compose the mail (template, context, headers), so no rendering happens under the lock.
    """

    kind: EffectKind
    ticket_id: int | None
    payload: dict[str, Any]
    due: datetime


@dataclass(frozen=True)
class EffectRow:
    id: int
    kind: EffectKind
    ticket_id: int | None
    payload: dict[str, Any]
    due: datetime
    state: str  # queued | done | failed
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class MessageRow:
    id: int
    kind: str
    author: str
    subject: str
    body: str
    created_at: datetime
    attachments: tuple[str, ...]


@dataclass(frozen=True)
class EventRow:
    at: datetime
    actor: str
    kind: str
    detail: str


class Tx(Protocol):
    """The statements of one write transaction. All or nothing: it commits when the work
    given to `Store.write` returns and rolls back when it raises."""

    def others_waiting(self) -> bool:
        """Whether another writer waits for this transaction to end: long work commits early."""

    def each(self) -> AbstractContextManager[None]:
        """A nested part of the transaction: undone alone if the block raises (SAVEPOINT)."""

    def inbox_states(self, inbox_ids: Iterable[int]) -> dict[int, str]: ...
    def mark_inbox_done(self, inbox_id: int, ticket_id: int) -> None: ...
    def mark_inbox_failed(self, inbox_id: int, error: str) -> None: ...

    def ticket(self, ticket_id: int) -> Ticket | None: ...

    def create_ticket(self, *, subject: str, group: str, requester: str, account: str | None,
                      at: datetime) -> Ticket:
        """A new ticket, New and of normal priority, numbered after the highest so far."""

    def save_ticket(self, ticket: Ticket) -> None: ...
    def participants(self, ticket_id: int) -> list[Participant]: ...
    def add_participant(self, ticket_id: int, email: str, role: str) -> None: ...

    def tickets_for_message_ids(self, message_ids: Iterable[str]) -> dict[str, int]:
        """The tickets of the known Message-IDs among `message_ids` (at most 200 looked at)."""

    def message_id_known(self, message_id: str) -> bool: ...

    def thread_message_ids(self, ticket_id: int) -> list[str]:
        """The ticket's threading Message-IDs, oldest first."""

    def remember_message_id(self, message_id: str, ticket_id: int) -> None:
        """Make `message_id` thread into `ticket_id` (the first ticket to claim it keeps it)."""

    def add_message(self, *, ticket_id: int, inbox_id: int | None, kind: str, author: str,
                    subject: str, body: str, at: datetime,
                    attachments: Iterable[tuple[str, str, int, str]] = ()) -> int: ...

    def add_event(self, ticket_id: int, at: datetime, actor: str, kind: str,
                  detail: str) -> None: ...

    def automatic_mails_since(self, rcpt_to: str, since: datetime) -> int:
        """Automatic mails queued to `rcpt_to` from the minute of `since` on."""

    def incoming_mails_since(self, ticket_id: int, since: datetime, *,
                             kinds: Sequence[str]) -> int:
        """Mails from intake stored on the ticket since `since` as one of `kinds` of message."""

    def add_effect(self, effect: Effect, *, at: datetime, automatic_to: str | None = None) -> int:
        """Queue an effect; `automatic_to` counts an automatic mail against that recipient."""


class Store(Protocol):
    lock_waits: int          # write transactions that waited for another process's writer
    lock_wait_seconds: float

    async def close(self) -> None: ...

    async def write(self, work: Callable[[Tx], T]) -> T:
        """Run `work` as one transaction and return its result; StoreUnavailable if it could
        not be written. The work runs on one thread, off the event loop, as one call."""

    async def accept(self, raw: bytes, *, key: str, source: str, mail_from: str | None,
                     rcpt_to: Iterable[str], at: datetime) -> Accepted:
        """Commit raw mail to the inbox, once per dedupe key; returns once it is durable."""

    async def claim_inbox(self, runner: str, *, now: datetime, lease: float, limit: int,
                          max_bytes: int) -> list[InboxRow]:
        """The oldest new rows nobody holds, about `max_bytes` at most (at least one), now
        held by `runner` for `lease` seconds. A claim survives a crash of the process; a
        power cut may lose it, which leaves the rows free again, as a restart does."""

    async def claim_due(self, kind: EffectKind, runner: str, *, now: datetime, lease: float,
                        limit: int = 50) -> list[EffectRow]:
        """Queued effects of `kind` due by `now` that nobody holds, earliest due first, now
        held by `runner` (lost to a power cut as `claim_inbox`'s claims are)."""

    async def release_claims(self, holder_gone: Callable[[str], bool]) -> int:
        """Let go of the claims of every runner that `holder_gone` says is no more (a worker
        killed on this host), so its rows need not wait for the lease; returns how many."""

    async def effect_done(self, effect_id: int, runner: str, at: datetime) -> None:
        """Mark the effect done. It survives a crash of the process; a power cut just after
        may lose the mark, and the effect is then done again (as after a crash between the
        effect and this call): effects must bear being repeated."""

    async def effect_retry(self, effect_id: int, runner: str, error: str, next_at: datetime,
                           *, give_up: bool) -> None: ...

    async def next_due(self, kind: EffectKind) -> datetime | None: ...

    async def requeue_failed(self, kind: EffectKind, now: datetime) -> int:
        """Queue every failed effect of `kind` again, due `now`; returns how many."""

    async def inbox_ids(self, state: Literal["new", "failed"], limit: int = 1000) -> list[int]: ...
    async def inbox_row(self, inbox_id: int) -> InboxRow | None: ...
    async def imap_position(self, mailbox: str) -> ImapPosition | None: ...
    async def set_imap_position(self, mailbox: str, position: ImapPosition) -> None: ...
    async def counts(self, since: datetime) -> Counts: ...
    async def tickets(self, *, status: str | None = None, group: str | None = None,
                      assignee: str | None = None, limit: int = 100) -> list[Ticket]: ...
    async def ticket(self, ticket_id: int) -> Ticket | None: ...
    async def participants(self, ticket_id: int) -> list[Participant]: ...
    async def messages(self, ticket_id: int) -> list[MessageRow]: ...
    async def events(self, ticket_id: int) -> list[EventRow]: ...
    async def effects(self, ticket_id: int) -> list[EffectRow]: ...


async def open_store(path: Path) -> Store:
    """The store at `path` (SQLite), migrated to the current schema."""
    from supportd.store.sqlite import SqliteStore  # the only place that names the backend

    return await SqliteStore.open(path)
