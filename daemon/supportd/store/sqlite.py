"""Store: every SQL statement of supportd, over one SQLite file in WAL mode (aiosqlite).

SQLite has one writer. `accept` is group commit: inbox rows that arrive while a commit is in
flight are written together in the next one, so concurrent SMTP sessions share one fsync
(synchronous=FULL: a commit is on disk before `accept` returns). That commit runs as one
call on a connection and thread of its own (lock, BEGIN, inserts, COMMIT), so it never
holds the lock across event-loop turns; everything else writes through the aiosqlite
connection, serialised by an asyncio lock. All writers, in this and other processes
(`supportd replay`), take an flock on `<store>.lock` before BEGIN: the kernel wakes the next
writer the moment it is released, where SQLite's busy handler polls with sleeps of up to
100 ms.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from supportd.tickets.model import Participant, Priority, Status, Ticket


def timestamp(moment: datetime) -> str:
    """The one text form of times in the store: UTC, fixed width, so text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


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


def store_unavailable(error: BaseException) -> bool:
    """True when SQLite could not write for now (disk full, I/O error, locked): retry later."""
    name = getattr(error, "sqlite_errorname", "")
    return isinstance(error, sqlite3.OperationalError) and (
        name in ("SQLITE_FULL", "SQLITE_BUSY", "SQLITE_LOCKED") or name.startswith("SQLITE_IOERR"))


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
class QueuedMail:
    """An outbound mail row: rendered once, in the transaction that decided to send it."""

    ticket_id: int | None
    kind: str
    automatic: bool
    mail_from: str
    rcpt_to: str
    message_id: str
    raw: bytes


@dataclass(frozen=True)
class OutboxRow:
    id: int
    ticket_id: int | None
    kind: str
    mail_from: str
    rcpt_to: str
    message_id: str
    raw: bytes
    state: str
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


@dataclass(frozen=True)
class _Arrival:
    raw: bytes
    key: str
    source: str
    mail_from: str | None
    rcpt_to: tuple[str, ...]
    at: str
    done: asyncio.Future[Accepted]


PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=10000")


class Store:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self._write_lock = asyncio.Lock()
        self._writer_lock = _open_lock(path)
        self._arrivals: list[_Arrival] = []
        self._flusher: asyncio.Task[None] | None = None
        self._inbox_db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in PRAGMAS:
            self._inbox_db.execute(f"PRAGMA {pragma}")
        self._inbox_lock = _open_lock(path)  # its own open file: flock excludes the other
        self._inbox_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="supportd-inbox")
        self.lock_waits = 0  # write transactions that waited for another writer
        self.lock_wait_seconds = 0.0

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            await db.execute(f"PRAGMA {pragma}")
        store = cls(db, path)
        await store._migrate()
        return store

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        await self._db.close()
        self._inbox_thread.shutdown()
        self._inbox_db.close()
        os.close(self._writer_lock)
        os.close(self._inbox_lock)

    async def _migrate(self) -> None:
        await self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
        async with self._db.execute("SELECT max(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = row[0] if row and row[0] is not None else 0
        folder = resources.files("supportd.store") / "migrations"
        scripts = sorted(
            (int(f.name.partition("_")[0]), f) for f in folder.iterdir() if f.name.endswith(".sql")
        )
        for version, script in scripts:
            if version > current:
                # executescript commits on its own; the version row makes a rerun impossible.
                sql = script.read_text(encoding="utf-8")
                await self._db.executescript(
                    f"BEGIN IMMEDIATE;\n{sql}\n"
                    f"INSERT INTO schema_version VALUES ({version});\nCOMMIT;"
                )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One write transaction; commits on leaving, rolls back on an exception."""
        async with self._write_lock:
            await self._lock_writers()
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield Tx(self._db)
                except BaseException:
                    await self._db.rollback()
                    raise
                await self._db.commit()
            finally:
                fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    async def _lock_writers(self) -> None:
        if not _try_lock(self._writer_lock):
            await asyncio.to_thread(self._wait_for_lock, self._writer_lock)

    def _wait_for_lock(self, fd: int) -> None:
        """Block until the writers' lock is ours, counting the wait (a thread, never the loop)."""
        started = time.perf_counter()
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.lock_waits += 1
        self.lock_wait_seconds += time.perf_counter() - started

    def _commit_arrivals(self, batch: list[_Arrival]) -> list[Accepted]:
        """In the inbox thread: the whole group commit, so the lock is held only for it."""
        if not _try_lock(self._inbox_lock):
            self._wait_for_lock(self._inbox_lock)
        db = self._inbox_db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                results = [_insert_inbox(db, a) for a in batch]
            except BaseException:
                db.rollback()
                raise
            db.commit()
        finally:
            fcntl.flock(self._inbox_lock, fcntl.LOCK_UN)
        return results

    # -- intake ------------------------------------------------------------------------

    async def accept(
        self, raw: bytes, *, key: str, source: str, mail_from: str | None,
        rcpt_to: Iterable[str], at: datetime,
    ) -> Accepted:
        """Commit raw mail to the inbox (once per dedupe key); returns after it is on disk."""
        done: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._arrivals.append(
            _Arrival(raw, key, source, mail_from, tuple(rcpt_to), timestamp(at), done)
        )
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_arrivals())
        return await done

    async def _flush_arrivals(self) -> None:
        while self._arrivals:
            batch, self._arrivals = self._arrivals, []
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._inbox_thread, self._commit_arrivals, batch)
            except Exception as error:
                for arrival in batch:
                    if not arrival.done.done():
                        arrival.done.set_exception(error)
                continue
            for arrival, result in zip(batch, results, strict=True):
                if not arrival.done.done():
                    arrival.done.set_result(result)

    async def inbox_ids(self, state: str, limit: int = 1000) -> list[int]:
        return [r[0] for r in await self._all(
            "SELECT id FROM inbox WHERE state = ? ORDER BY id LIMIT ?", (state, limit))]

    async def new_inbox_rows(self, limit: int, max_bytes: int) -> list[InboxRow]:
        """The oldest `new` rows, at most `limit` and about `max_bytes` of mail (at least one)."""
        sizes = await self._all("SELECT id, length(raw) FROM inbox WHERE state = 'new' "
                                "ORDER BY id LIMIT ?", (limit,))
        ids: list[int] = []
        total = 0
        for inbox_id, size in sizes:
            if ids and total + size > max_bytes:
                break
            ids.append(inbox_id)
            total += size
        if not ids:
            return []
        rows = await self._all(f"SELECT * FROM inbox WHERE id IN ({','.join('?' * len(ids))}) "
                               "ORDER BY id", tuple(ids))
        return [_inbox_row(r) for r in rows]

    async def inbox_row(self, inbox_id: int) -> InboxRow | None:
        rows = await self._all("SELECT * FROM inbox WHERE id = ?", (inbox_id,))
        return _inbox_row(rows[0]) if rows else None

    async def imap_position(self, mailbox: str) -> ImapPosition | None:
        rows = await self._all(
            "SELECT uidvalidity, last_uid FROM imap_positions WHERE mailbox = ?", (mailbox,))
        return ImapPosition(rows[0][0], rows[0][1]) if rows else None

    async def set_imap_position(self, mailbox: str, position: ImapPosition) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO imap_positions (mailbox, uidvalidity, last_uid) VALUES (?, ?, ?) "
                "ON CONFLICT (mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity, "
                "last_uid = excluded.last_uid", (mailbox, position.uidvalidity, position.last_uid))

    # -- outbox ------------------------------------------------------------------------

    async def due_mail(self, now: datetime, limit: int = 50) -> list[OutboxRow]:
        rows = await self._all(
            "SELECT * FROM outbox WHERE state = 'queued' AND next_attempt_at <= ? "
            "ORDER BY id LIMIT ?", (timestamp(now), limit))
        return [_outbox_row(r) for r in rows]

    async def next_mail_due(self) -> datetime | None:
        rows = await self._all(
            "SELECT min(next_attempt_at) FROM outbox WHERE state = 'queued'", ())
        return parse_timestamp(rows[0][0]) if rows and rows[0][0] else None

    async def counts(self, since: datetime) -> Counts:
        """Counts over indexes only (migration 003), cheap enough for every scrape."""
        mails = await self._all("SELECT count(*) FROM inbox WHERE received_at >= ?",
                                (timestamp(since),))
        pending = await self._all("SELECT source, state, count(*) FROM inbox "
                                  "WHERE state != 'done' GROUP BY source, state", ())
        tickets = await self._all("SELECT status, count(*) FROM tickets GROUP BY status", ())
        outbox = await self._all("SELECT state, count(*) FROM outbox WHERE state != 'sent' "
                                 "GROUP BY state", ())
        return Counts(
            mails_since=mails[0][0], inbox_pending={(r[0], r[1]): r[2] for r in pending},
            tickets={r[0]: r[1] for r in tickets}, outbox={r[0]: r[1] for r in outbox},
            next_mail_due=await self.next_mail_due())

    async def mark_sent(self, outbox_id: int, at: datetime) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, "
                "last_error = NULL WHERE id = ?", (timestamp(at), outbox_id))

    async def mark_retry(self, outbox_id: int, error: str, next_at: datetime,
                         *, give_up: bool) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, "
                "state = ? WHERE id = ?",
                (error, timestamp(next_at), "failed" if give_up else "queued", outbox_id))

    # -- reading, for the CLI ----------------------------------------------------------

    async def tickets(
        self, *, status: str | None = None, group: str | None = None,
        assignee: str | None = None, limit: int = 100,
    ) -> list[Ticket]:
        where, args = [], []
        for column, value in (("status", status), ("group_name", group), ("assignee", assignee)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM tickets" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._all(sql + " ORDER BY id LIMIT ?", (*args, limit))
        return [_ticket(r) for r in rows]

    async def ticket(self, ticket_id: int) -> Ticket | None:
        return await Tx(self._db).ticket(ticket_id)

    async def participants(self, ticket_id: int) -> list[Participant]:
        return await Tx(self._db).participants(ticket_id)

    async def messages(self, ticket_id: int) -> list[MessageRow]:
        rows = await self._all(
            "SELECT m.*, (SELECT group_concat(filename || ' (' || content_type || ', ' || size "
            "|| ' bytes)', char(10)) FROM attachments a WHERE a.message_id = m.id) AS files "
            "FROM messages m WHERE ticket_id = ? ORDER BY id", (ticket_id,))
        return [MessageRow(r["id"], r["kind"], r["author"], r["subject"], r["body"],
                           parse_timestamp(r["created_at"]),
                           tuple(r["files"].split("\n")) if r["files"] else ())
                for r in rows]

    async def events(self, ticket_id: int) -> list[EventRow]:
        rows = await self._all(
            "SELECT * FROM events WHERE ticket_id = ? ORDER BY id", (ticket_id,))
        return [EventRow(parse_timestamp(r["at"]), r["actor"], r["kind"], r["detail"])
                for r in rows]

    async def outbox(self, ticket_id: int) -> list[OutboxRow]:
        rows = await self._all("SELECT * FROM outbox WHERE ticket_id = ? ORDER BY id",
                               (ticket_id,))
        return [_outbox_row(r) for r in rows]

    async def _all(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        return list(await self._db.execute_fetchall(sql, args))  # one thread hop, not three


class Tx:
    """The statements allowed inside one write transaction."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    # Each statement is one hop to aiosqlite's thread (a cursor costs three: run, fetch, close).
    async def execute(self, sql: str, args: tuple[Any, ...] = ()) -> int | None:
        row = await self._db.execute_insert(sql, args)
        return row[0] if row else None

    async def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        rows = await self._db.execute_fetchall(sql, args)
        return next(iter(rows), None)

    async def _all(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        return list(await self._db.execute_fetchall(sql, args))

    async def inbox_states(self, inbox_ids: Iterable[int]) -> dict[int, str]:
        ids = tuple(inbox_ids)
        rows = await self._all(
            f"SELECT id, state FROM inbox WHERE id IN ({','.join('?' * len(ids))})", ids)
        return {r[0]: r[1] for r in rows}

    # One savepoint per mail in a batch: a mail that raises is undone alone (SQLite SAVEPOINT).
    async def savepoint(self) -> None:
        await self._db.execute_fetchall("SAVEPOINT mail", ())

    async def release_savepoint(self) -> None:
        await self._db.execute_fetchall("RELEASE mail", ())

    async def rollback_to_savepoint(self) -> None:
        await self._db.execute_fetchall("ROLLBACK TO mail", ())
        await self._db.execute_fetchall("RELEASE mail", ())

    async def mark_inbox_failed(self, inbox_id: int, error: str) -> None:
        await self.execute(
            "UPDATE inbox SET state = 'failed', error = ?, attempts = attempts + 1 "
            "WHERE id = ?", (error, inbox_id))

    async def mark_inbox_done(self, inbox_id: int, ticket_id: int) -> None:
        await self.execute(
            "UPDATE inbox SET state = 'done', error = NULL, ticket_id = ?, "
            "attempts = attempts + 1 WHERE id = ?", (ticket_id, inbox_id))

    async def requeue_inbox(self, inbox_id: int) -> None:
        await self.execute("UPDATE inbox SET state = 'new' WHERE id = ?", (inbox_id,))

    async def ticket(self, ticket_id: int) -> Ticket | None:
        row = await self._one("SELECT * FROM tickets WHERE id = ?", (ticket_id,))
        return _ticket(row) if row else None

    async def next_ticket_id(self) -> int:
        row = await self._one("SELECT coalesce(max(id), 0) + 1 FROM tickets", ())
        assert row is not None
        return int(row[0])

    async def save_ticket(self, t: Ticket) -> None:
        await self.execute(
            "INSERT INTO tickets (id, subject, status, priority, group_name, assignee, requester, "
            "account, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, status = excluded.status, "
            "priority = excluded.priority, group_name = excluded.group_name, "
            "assignee = excluded.assignee, updated_at = excluded.updated_at",
            (t.id, t.subject, t.status.value, t.priority.value, t.group, t.assignee, t.requester,
             t.account, timestamp(t.created_at), timestamp(t.updated_at)))

    async def participants(self, ticket_id: int) -> list[Participant]:
        rows = await self._all(
            "SELECT email, role FROM participants WHERE ticket_id = ? ORDER BY rowid",
            (ticket_id,))
        return [Participant(r[0], r[1]) for r in rows]

    async def add_participant(self, ticket_id: int, email: str, role: str) -> None:
        await self.execute(
            "INSERT INTO participants (ticket_id, email, role) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING", (ticket_id, email, role))

    async def tickets_for_message_ids(self, message_ids: Iterable[str]) -> dict[str, int]:
        ids = list(message_ids)[:200]  # a References header can be absurdly long
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self._all(
            f"SELECT message_id, ticket_id FROM message_ids WHERE message_id IN ({marks})",
            tuple(ids))
        return {r[0]: r[1] for r in rows}

    async def thread_message_ids(self, ticket_id: int) -> list[str]:
        """The ticket's Message-IDs, oldest first: the References of mail we send on it."""
        rows = await self._all(
            "SELECT message_id FROM message_ids WHERE ticket_id = ? ORDER BY rowid", (ticket_id,))
        return [r[0] for r in rows]

    async def remember_message_id(self, message_id: str, ticket_id: int) -> None:
        await self.execute(
            "INSERT INTO message_ids (message_id, ticket_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (message_id, ticket_id))

    async def add_message(
        self, *, ticket_id: int, inbox_id: int | None, kind: str, author: str, subject: str,
        body: str, at: datetime, attachments: Iterable[tuple[str, str, int, str]] = (),
    ) -> int:
        message_id = await self.execute(
            "INSERT INTO messages (ticket_id, inbox_id, kind, author, subject, body, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ticket_id, inbox_id, kind, author, subject, body, timestamp(at)))
        assert message_id is not None
        for filename, content_type, size, sha256 in attachments:
            await self.execute(
                "INSERT INTO attachments (message_id, filename, content_type, size, sha256) "
                "VALUES (?, ?, ?, ?, ?)", (message_id, filename, content_type, size, sha256))
        return message_id

    async def add_event(self, ticket_id: int, at: datetime, actor: str, kind: str,
                        detail: str) -> None:
        await self.execute(
            "INSERT INTO events (ticket_id, at, actor, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (ticket_id, timestamp(at), actor, kind, detail))

    async def automatic_mails_since(self, rcpt_to: str, since: datetime) -> int:
        row = await self._one(
            "SELECT count(*) FROM outbox WHERE automatic = 1 AND rcpt_to = ? AND created_at >= ?",
            (rcpt_to, timestamp(since)))
        return int(row[0]) if row else 0

    async def incoming_mails_since(self, ticket_id: int, since: datetime) -> int:
        """Mails received into this ticket since `since` (its messages that came from intake)."""
        row = await self._one(
            "SELECT count(*) FROM messages WHERE ticket_id = ? AND inbox_id IS NOT NULL "
            "AND created_at >= ?", (ticket_id, timestamp(since)))
        return int(row[0]) if row else 0

    async def queue_mail(self, mail: QueuedMail, at: datetime) -> None:
        await self.execute(
            "INSERT INTO outbox (ticket_id, created_at, kind, automatic, mail_from, rcpt_to, "
            "message_id, raw, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mail.ticket_id, timestamp(at), mail.kind, int(mail.automatic), mail.mail_from,
             mail.rcpt_to, mail.message_id, mail.raw, timestamp(at)))


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_lock(path: Path) -> int:
    return os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _insert_inbox(db: sqlite3.Connection, a: _Arrival) -> Accepted:
    row = db.execute(
        "INSERT INTO inbox (received_at, source, mail_from, rcpt_to, dedupe_key, raw) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
        (a.at, a.source, a.mail_from, json.dumps(a.rcpt_to), a.key, a.raw)).fetchone()
    if row is not None:
        return Accepted(row[0], duplicate=False)
    existing = db.execute("SELECT id FROM inbox WHERE dedupe_key = ?", (a.key,)).fetchone()
    assert existing is not None  # the conflict above means the row exists
    return Accepted(existing[0], duplicate=True)


def _ticket(r: sqlite3.Row) -> Ticket:
    return Ticket(
        id=r["id"], subject=r["subject"], status=Status(r["status"]),
        priority=Priority(r["priority"]), group=r["group_name"], assignee=r["assignee"],
        requester=r["requester"], account=r["account"],
        created_at=parse_timestamp(r["created_at"]), updated_at=parse_timestamp(r["updated_at"]))


def _inbox_row(r: sqlite3.Row) -> InboxRow:
    return InboxRow(
        id=r["id"], received_at=parse_timestamp(r["received_at"]), source=r["source"],
        mail_from=r["mail_from"], rcpt_to=tuple(json.loads(r["rcpt_to"])), raw=r["raw"],
        state=r["state"], error=r["error"], attempts=r["attempts"], ticket_id=r["ticket_id"])


def _outbox_row(r: sqlite3.Row) -> OutboxRow:
    return OutboxRow(
        id=r["id"], ticket_id=r["ticket_id"], kind=r["kind"], mail_from=r["mail_from"],
        rcpt_to=r["rcpt_to"], message_id=r["message_id"], raw=r["raw"], state=r["state"],
        attempts=r["attempts"], last_error=r["last_error"])
