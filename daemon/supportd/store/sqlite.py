"""Store: every SQL statement of supportd, over one SQLite file in WAL mode.

SQLite has one writer. Every write transaction is one call on the writer thread, over a
plain sqlite3 connection of its own (`Store.write`: lock, BEGIN, the work as synchronous
`SqliteTx` statements, COMMIT), so a transaction is one thread hop however many statements it
runs, and it never holds the lock across event-loop turns. `accept` is group commit: inbox
rows that arrive while a commit is in flight are written together in the next one, so
concurrent SMTP sessions share one fsync (synchronous=FULL: a commit is on disk before
`accept` returns); its inserts run on the event loop between BEGIN and COMMIT on the thread
(see `_commit_arrivals`). All writers, in this and other processes (the worker, `supportd replay`),
take an flock on `<store>.lock` before BEGIN: the kernel wakes the next writer the moment it
is released, where SQLite's busy handler polls with sleeps of up to 100 ms. Reads that are
not part of a write (the CLI, counts) go through aiosqlite. This module implements
`store.api`; nothing outside `store/` imports it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import aiosqlite

from supportd.store.api import (
    Accepted,
    Counts,
    Effect,
    EffectKind,
    EffectRow,
    EventRow,
    ImapPosition,
    InboxRow,
    MessageRow,
    StoreUnavailable,
    Tx,
)
from supportd.tickets.model import Participant, Priority, Status, Ticket

T = TypeVar("T")


def timestamp(moment: datetime) -> str:
    """The one text form of times in the store: UTC, fixed width, so text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    # fromisoformat reads the "Z" since Python 3.11, some 40 times faster than strptime.
    return datetime.fromisoformat(text)


def _unavailable(error: BaseException) -> bool:
    """True when SQLite could not write for now (disk full, I/O error, locked): retry later."""
    name = getattr(error, "sqlite_errorname", "")
    return isinstance(error, sqlite3.OperationalError) and (
        name in ("SQLITE_FULL", "SQLITE_BUSY", "SQLITE_LOCKED") or name.startswith("SQLITE_IOERR"))


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """SQLite's "cannot write now" errors as the interface's one StoreUnavailable."""
    try:
        yield
    except sqlite3.Error as error:
        if _unavailable(error):
            raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
        raise


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
# Read both inside write transactions (SqliteTx) and outside them (Store, for the CLI).
_TICKET = "SELECT * FROM tickets WHERE id = ?"
_PARTICIPANTS = "SELECT email, role FROM participants WHERE ticket_id = ? ORDER BY rowid"
# In the order of the index effects_due (kind, due_at, then rowid): the first `limit` rows
# are read and no more. "ORDER BY id" sorted every due row first, with the lock held: 29 ms
# for a claim when 40 000 mails were queued.
CLAIM_EFFECTS = (
    "UPDATE effects SET claimed_by = ?, lease_until = ? WHERE id IN ("
    "SELECT id FROM effects WHERE kind = ? AND state = 'queued' AND due_at <= ? "
    "AND (lease_until IS NULL OR lease_until < ?) ORDER BY due_at, id LIMIT ?) RETURNING *")


class SqliteStore:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db  # reads
        self._arrivals: list[_Arrival] = []
        self._flusher: asyncio.Task[None] | None = None
        self._writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._writer.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            self._writer.execute(f"PRAGMA {pragma}")
        self._writer_lock = _open_lock(path, "lock")
        self._wanted_lock = _open_lock(path, "wanted")  # shared by writers waiting for the lock
        self._writing = asyncio.Lock()  # one transaction at a time on the writer connection
        self._writer_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="supportd-writer")
        self.lock_waits = 0  # write transactions that waited for another process's writer
        self.lock_wait_seconds = 0.0

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
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
        self._writer_thread.shutdown()
        self._writer.close()
        os.close(self._writer_lock)
        os.close(self._wanted_lock)

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

    async def write(self, work: Callable[[Tx], T]) -> T:
        """Run `work` as one write transaction (see `_write`)."""
        return await self._write(work)

    async def _write(self, work: Callable[[SqliteTx], T], *, durable: bool = True) -> T:
        """Run `work` as one write transaction on the writer thread and return its result.

        It commits when `work` returns and rolls back when it raises; the lock is held only
        for this one call, never across event-loop turns. A transaction that is not `durable`
        (a claim, an effect marked done) commits without its own fsync: the next durable
        commit's fsync of the WAL takes it to disk too, and only a power cut before that loses
        it (a claim, which a restart releases anyway; a done mark, so the effect is repeated).
        """
        async with self._writing:
            return await asyncio.get_running_loop().run_in_executor(
                self._writer_thread, self._transaction, work, durable)

    def _transaction(self, work: Callable[[SqliteTx], T], durable: bool) -> T:
        """In the writer thread: lock, BEGIN, the work, COMMIT, unlock."""
        with _translated():
            if durable:
                return self._run_transaction(work)
            self._writer.execute("PRAGMA synchronous=NORMAL")  # outside a transaction only
            try:
                return self._run_transaction(work)
            finally:
                self._writer.execute("PRAGMA synchronous=FULL")

    def _run_transaction(self, work: Callable[[SqliteTx], T]) -> T:
        self._begin()
        try:
            result = work(SqliteTx(self._writer, self.writer_wanted))
        except BaseException:
            self._end(commit=False)
            raise
        self._end(commit=True)
        return result

    def _begin(self) -> None:
        """Take the writers' lock and BEGIN (on the writer thread: either may wait)."""
        if not _try_lock(self._writer_lock):
            self._wait_for_lock()
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        except BaseException:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)
            raise

    def _end(self, *, commit: bool) -> None:
        """COMMIT or ROLLBACK, then release the writers' lock."""
        try:
            if commit:
                try:
                    self._writer.commit()
                except BaseException:
                    self._writer.rollback()  # a failed COMMIT can leave the transaction open
                    raise
            else:
                self._writer.rollback()
        finally:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    def _wait_for_lock(self) -> None:
        """Block until the writers' lock is ours, counting the wait (a thread, never the loop).

        While it waits it holds `<store>.wanted` shared, so that a long transaction (a
        processing batch) sees someone is waiting and commits early (`writer_wanted`).
        """
        started = time.perf_counter()
        fcntl.flock(self._wanted_lock, fcntl.LOCK_SH)
        try:
            fcntl.flock(self._writer_lock, fcntl.LOCK_EX)
        finally:
            fcntl.flock(self._wanted_lock, fcntl.LOCK_UN)
        self.lock_waits += 1
        self.lock_wait_seconds += time.perf_counter() - started

    def writer_wanted(self) -> bool:
        """Whether another writer (intake's commit, in the daemon) is waiting for the lock
        (`SqliteTx.others_waiting`)."""
        if _try_lock(self._wanted_lock):
            fcntl.flock(self._wanted_lock, fcntl.LOCK_UN)
            return False
        return True

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
                results = await self._commit_arrivals(batch)
            except Exception as error:
                for arrival in batch:
                    if not arrival.done.done():
                        arrival.done.set_exception(error)
                continue
            for arrival, result in zip(batch, results, strict=True):
                if not arrival.done.done():
                    arrival.done.set_result(result)

    async def _commit_arrivals(self, batch: list[_Arrival]) -> list[Accepted]:
        """Intake's group commit. BEGIN (which may wait for the lock) and COMMIT (the fsync) run
        on the writer thread; the inserts, microseconds each, on the event loop: a thread hop
        per insert waits each time for the busy loop to hand back the GIL (measured at about
        0.4 ms an insert under load, against 45 us unloaded)."""
        with _translated():
            return await self._commit_arrivals_once(batch)

    async def _commit_arrivals_once(self, batch: list[_Arrival]) -> list[Accepted]:
        loop = asyncio.get_running_loop()
        async with self._writing:
            await loop.run_in_executor(self._writer_thread, self._begin)
            try:
                results = SqliteTx(self._writer, self.writer_wanted).insert_inbox(batch)
            except BaseException:
                self._end(commit=False)
                raise
            ending = loop.run_in_executor(self._writer_thread, partial(self._end, commit=True))
            try:
                await asyncio.shield(ending)
            except asyncio.CancelledError:
                await asyncio.wait([ending])  # the connection is the thread's until it is done
                raise
        return results

    async def inbox_ids(self, state: Literal["new", "failed"], limit: int = 1000) -> list[int]:
        # `state != 'done'` lets SQLite use the partial index inbox_pending, not scan the inbox.
        return [r[0] for r in await self._all(
            "SELECT id FROM inbox WHERE state = ? AND state != 'done' ORDER BY id LIMIT ?",
            (state, limit))]

    async def claim_inbox(self, runner: str, *, now: datetime, lease: float, limit: int,
                          max_bytes: int) -> list[InboxRow]:
        """The oldest new rows nobody holds, about `max_bytes` of mail (at least one), now
        held by `runner` until `lease` seconds from `now`."""
        return await self._write(partial(_claim_inbox, runner=runner, now=timestamp(now),
                                        until=timestamp(now + timedelta(seconds=lease)),
                                        limit=limit, max_bytes=max_bytes), durable=False)

    async def inbox_row(self, inbox_id: int) -> InboxRow | None:
        rows = await self._all("SELECT * FROM inbox WHERE id = ?", (inbox_id,))
        return _inbox_row(rows[0]) if rows else None

    async def imap_position(self, mailbox: str) -> ImapPosition | None:
        rows = await self._all(
            "SELECT uidvalidity, last_uid FROM imap_positions WHERE mailbox = ?", (mailbox,))
        return ImapPosition(rows[0][0], rows[0][1]) if rows else None

    async def set_imap_position(self, mailbox: str, position: ImapPosition) -> None:
        await self._write(lambda tx: tx._run(
            "INSERT INTO imap_positions (mailbox, uidvalidity, last_uid) VALUES (?, ?, ?) "
            "ON CONFLICT (mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity, "
            "last_uid = excluded.last_uid", (mailbox, position.uidvalidity, position.last_uid)))

    # -- effects -----------------------------------------------------------------------

    async def claim_due(self, kind: EffectKind, runner: str, *, now: datetime, lease: float,
                        limit: int = 50) -> list[EffectRow]:
        """Queued effects of `kind` due by `now` that nobody holds, now held by `runner`."""
        at, until = timestamp(now), timestamp(now + timedelta(seconds=lease))

        def claim(tx: SqliteTx) -> list[sqlite3.Row]:
            return tx._all(CLAIM_EFFECTS, (runner, until, kind, at, at, limit))
        rows = await self._write(claim, durable=False)
        return sorted((_effect_row(r) for r in rows), key=lambda e: (e.due, e.id))

    async def release_claims(self, holder_gone: Callable[[str], bool]) -> int:
        def release(tx: SqliteTx) -> int:
            holders = [r[0] for r in tx._all(
                "SELECT claimed_by FROM inbox WHERE state = 'new' AND state != 'done' "
                "AND claimed_by IS NOT NULL UNION SELECT claimed_by FROM effects "
                "WHERE state = 'queued' AND claimed_by IS NOT NULL", ())]
            gone = [h for h in holders if holder_gone(h)]
            if not gone:
                return 0
            marks = ",".join("?" * len(gone))
            released = 0
            for table in ("inbox", "effects"):
                released += tx._run(f"UPDATE {table} SET claimed_by = NULL, lease_until = NULL "
                                    f"WHERE claimed_by IN ({marks})", tuple(gone)).rowcount
            return released
        return await self._write(release)

    async def effect_done(self, effect_id: int, runner: str, at: datetime) -> None:
        # Not durable: a power cut just after it can only repeat the effect, as a crash
        # between the effect and this mark can (a SIGKILL loses no commit in WAL mode).
        await self._write(lambda tx: tx._run(
            "UPDATE effects SET state = 'done', done_at = ?, attempts = attempts + 1, "
            "last_error = NULL, claimed_by = NULL, lease_until = NULL WHERE id = ?",
            (timestamp(at), effect_id)), durable=False)

    async def effect_retry(self, effect_id: int, runner: str, error: str, next_at: datetime,
                           *, give_up: bool) -> None:
        await self._write(lambda tx: tx._run(
            "UPDATE effects SET attempts = attempts + 1, last_error = ?, due_at = ?, "
            "state = ?, claimed_by = NULL, lease_until = NULL WHERE id = ?",
            (error, timestamp(next_at), "failed" if give_up else "queued", effect_id)))

    async def requeue_failed(self, kind: EffectKind, now: datetime) -> int:
        return await self._write(lambda tx: tx._run(
            "UPDATE effects SET state = 'queued', due_at = ?, attempts = 0 "
            "WHERE kind = ? AND state = 'failed'", (timestamp(now), kind)).rowcount)

    async def next_due(self, kind: EffectKind) -> datetime | None:
        rows = await self._all(
            "SELECT min(due_at) FROM effects WHERE kind = ? AND state = 'queued'", (kind,))
        return parse_timestamp(rows[0][0]) if rows and rows[0][0] else None

    async def counts(self, since: datetime) -> Counts:
        """Counts over indexes only (migration 003), cheap enough for every scrape."""
        mails = await self._all("SELECT count(*) FROM inbox WHERE received_at >= ?",
                                (timestamp(since),))
        pending = await self._all("SELECT source, state, count(*) FROM inbox "
                                  "WHERE state != 'done' GROUP BY source, state", ())
        tickets = await self._all("SELECT status, count(*) FROM tickets GROUP BY status", ())
        outbox = await self._all("SELECT state, count(*) FROM effects WHERE kind = 'mail' "
                                 "AND state != 'done' GROUP BY state", ())
        return Counts(
            mails_since=mails[0][0], inbox_pending={(r[0], r[1]): r[2] for r in pending},
            tickets={r[0]: r[1] for r in tickets}, outbox={r[0]: r[1] for r in outbox},
            next_mail_due=await self.next_due("mail"))

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
        rows = await self._all(_TICKET, (ticket_id,))
        return _ticket(rows[0]) if rows else None

    async def participants(self, ticket_id: int) -> list[Participant]:
        return [Participant(r[0], r[1]) for r in await self._all(_PARTICIPANTS, (ticket_id,))]

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

    async def effects(self, ticket_id: int) -> list[EffectRow]:
        rows = await self._all("SELECT * FROM effects WHERE ticket_id = ? ORDER BY id",
                               (ticket_id,))
        return [_effect_row(r) for r in rows]

    async def _all(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        with _translated():
            return list(await self._db.execute_fetchall(sql, args))  # one thread hop


class SqliteTx:
    """The statements allowed inside one write transaction (run on the writer thread)."""

    def __init__(self, db: sqlite3.Connection, writer_wanted: Callable[[], bool]) -> None:
        self._db = db
        self._writer_wanted = writer_wanted
        self._depth = 0

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with _translated():
            return self._db.execute(sql, args)

    def _insert(self, sql: str, args: tuple[Any, ...]) -> int:
        """Run an INSERT and return the new row's id."""
        rowid = self._run(sql, args).lastrowid
        assert rowid is not None
        return rowid

    def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._run(sql, args).fetchone()
        return row

    def _all(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        return self._run(sql, args).fetchall()

    def others_waiting(self) -> bool:
        return self._writer_wanted()

    @contextlib.contextmanager
    def each(self) -> Iterator[None]:
        """A SAVEPOINT: the block's statements are undone alone if it raises."""
        name = f"part{self._depth}"
        self._depth += 1
        self._run(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._run(f"ROLLBACK TO {name}")
            raise
        finally:
            self._depth -= 1
            self._run(f"RELEASE {name}")

    def insert_inbox(self, arrivals: list[_Arrival]) -> list[Accepted]:
        """Intake's group commit: each arrival's row, or the row already under its key."""
        accepted = []
        for a in arrivals:
            row = self._one(
                "INSERT INTO inbox (received_at, source, mail_from, rcpt_to, dedupe_key, raw) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                (a.at, a.source, a.mail_from, json.dumps(a.rcpt_to), a.key, a.raw))
            if row is None:
                row = self._one("SELECT id FROM inbox WHERE dedupe_key = ?", (a.key,))
                assert row is not None  # the conflict above means the row exists
                accepted.append(Accepted(row[0], duplicate=True))
            else:
                accepted.append(Accepted(row[0], duplicate=False))
        return accepted

    def inbox_states(self, inbox_ids: Iterable[int]) -> dict[int, str]:
        ids = tuple(inbox_ids)
        rows = self._all(
            f"SELECT id, state FROM inbox WHERE id IN ({','.join('?' * len(ids))})", ids)
        return {r[0]: r[1] for r in rows}

    def mark_inbox_failed(self, inbox_id: int, error: str) -> None:
        self._run(
            "UPDATE inbox SET state = 'failed', error = ?, attempts = attempts + 1 "
            "WHERE id = ?", (error, inbox_id))

    def mark_inbox_done(self, inbox_id: int, ticket_id: int) -> None:
        self._run(
            "UPDATE inbox SET state = 'done', error = NULL, ticket_id = ?, "
            "attempts = attempts + 1 WHERE id = ?", (ticket_id, inbox_id))

    def ticket(self, ticket_id: int) -> Ticket | None:
        row = self._one(_TICKET, (ticket_id,))
        return _ticket(row) if row else None

    def create_ticket(
        self, *, subject: str, group: str, requester: str, account: str | None, at: datetime,
    ) -> Ticket:
        """A new ticket, New and of normal priority; SQLite numbers it max(id) + 1."""
        ticket_id = self._insert(
            "INSERT INTO tickets (subject, status, priority, group_name, requester, account, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (subject, Status.NEW.value, Priority.NORMAL.value, group, requester, account,
             timestamp(at), timestamp(at)))
        return Ticket(id=ticket_id, subject=subject, status=Status.NEW, priority=Priority.NORMAL,
                      group=group, assignee=None, requester=requester, account=account,
                      created_at=at, updated_at=at)

    def save_ticket(self, t: Ticket) -> None:
        self._run(
            "INSERT INTO tickets (id, subject, status, priority, group_name, assignee, requester, "
            "account, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, status = excluded.status, "
            "priority = excluded.priority, group_name = excluded.group_name, "
            "assignee = excluded.assignee, updated_at = excluded.updated_at",
            (t.id, t.subject, t.status.value, t.priority.value, t.group, t.assignee, t.requester,
             t.account, timestamp(t.created_at), timestamp(t.updated_at)))

    def participants(self, ticket_id: int) -> list[Participant]:
        return [Participant(r[0], r[1]) for r in self._all(_PARTICIPANTS, (ticket_id,))]

    def add_participant(self, ticket_id: int, email: str, role: str) -> None:
        self._run(
            "INSERT INTO participants (ticket_id, email, role) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING", (ticket_id, email, role))

    def tickets_for_message_ids(self, message_ids: Iterable[str]) -> dict[str, int]:
        ids = list(message_ids)[:200]  # a References header can be absurdly long
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._all(
            f"SELECT message_id, ticket_id FROM message_ids WHERE message_id IN ({marks})",
            tuple(ids))
        return {r[0]: r[1] for r in rows}

    def thread_message_ids(self, ticket_id: int) -> list[str]:
        """The ticket's Message-IDs, oldest first: the References of mail we send on it."""
        rows = self._all(
            "SELECT message_id FROM message_ids WHERE ticket_id = ? ORDER BY rowid", (ticket_id,))
        return [r[0] for r in rows]

    def message_id_known(self, message_id: str) -> bool:
        return self._one("SELECT 1 FROM message_ids WHERE message_id = ?",
                         (message_id,)) is not None

    def remember_message_id(self, message_id: str, ticket_id: int) -> None:
        self._run(
            "INSERT INTO message_ids (message_id, ticket_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (message_id, ticket_id))

    def add_message(
        self, *, ticket_id: int, inbox_id: int | None, kind: str, author: str, subject: str,
        body: str, at: datetime, attachments: Iterable[tuple[str, str, int, str]] = (),
    ) -> int:
        message_id = self._insert(
            "INSERT INTO messages (ticket_id, inbox_id, kind, author, subject, body, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ticket_id, inbox_id, kind, author, subject, body, timestamp(at)))
        for filename, content_type, size, sha256 in attachments:
            self._run(
                "INSERT INTO attachments (message_id, filename, content_type, size, sha256) "
                "VALUES (?, ?, ?, ?, ?)", (message_id, filename, content_type, size, sha256))
        return message_id

    def add_event(self, ticket_id: int, at: datetime, actor: str, kind: str, detail: str) -> None:
        self._run(
            "INSERT INTO events (ticket_id, at, actor, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (ticket_id, timestamp(at), actor, kind, detail))

    def automatic_mails_since(self, rcpt_to: str, since: datetime) -> int:
        """Automatic mails queued to `rcpt_to` from the minute of `since` on (migration 004)."""
        row = self._one(
            "SELECT coalesce(sum(mails), 0) FROM auto_mail_minutes WHERE rcpt_to = ? "
            "AND minute >= ?", (rcpt_to, _minute(since)))
        return int(row[0]) if row else 0

    def incoming_mails_since(self, ticket_id: int, since: datetime, *,
                             kinds: Sequence[str]) -> int:
        """Mails from intake stored on the ticket since `since` as one of `kinds`."""
        marks = ",".join("?" * len(kinds))
        row = self._one(
            "SELECT count(*) FROM messages WHERE ticket_id = ? AND inbox_id IS NOT NULL "
            f"AND created_at >= ? AND kind IN ({marks})", (ticket_id, timestamp(since), *kinds))
        return int(row[0]) if row else 0

    def add_effect(self, effect: Effect, *, at: datetime, automatic_to: str | None = None) -> int:
        effect_id = self._insert(
            "INSERT INTO effects (kind, ticket_id, payload, due_at, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (effect.kind, effect.ticket_id, json.dumps(effect.payload), timestamp(effect.due),
             timestamp(at)))
        if automatic_to is not None:
            self._run(
                "INSERT INTO auto_mail_minutes (rcpt_to, minute, mails) VALUES (?, ?, 1) "
                "ON CONFLICT DO UPDATE SET mails = mails + 1", (automatic_to, _minute(at)))
            # Minutes the hourly limit no longer looks at: at most 61 rows a recipient.
            self._run("DELETE FROM auto_mail_minutes WHERE rcpt_to = ? AND minute < ?",
                      (automatic_to, _minute(at - timedelta(minutes=61))))
        return effect_id


def _claim_inbox(tx: SqliteTx, *, runner: str, now: str, until: str, limit: int,
                 max_bytes: int) -> list[InboxRow]:
    # "state != 'done'" lets SQLite use the partial index inbox_pending, which it cannot
    # infer from "state = 'new'": without it every batch scans all the inbox kept so far.
    sizes = tx._all("SELECT id, length(raw) FROM inbox WHERE state = 'new' AND state != 'done' "
                    "AND (lease_until IS NULL OR lease_until < ?) ORDER BY id LIMIT ?",
                    (now, limit))
    ids: list[int] = []
    total = 0
    for inbox_id, size in sizes:
        if ids and total + size > max_bytes:
            break
        ids.append(inbox_id)
        total += size
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = tx._all(f"UPDATE inbox SET claimed_by = ?, lease_until = ? WHERE id IN ({marks}) "
                   "RETURNING *", (runner, until, *ids))
    return sorted((_inbox_row(r) for r in rows), key=lambda r: r.id)


def _minute(moment: datetime) -> str:
    return timestamp(moment)[:16]  # 'YYYY-MM-DDTHH:MM'


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_lock(path: Path, suffix: str) -> int:
    return os.open(f"{path}.{suffix}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


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


def _effect_row(r: sqlite3.Row) -> EffectRow:
    return EffectRow(
        id=r["id"], kind=cast(EffectKind, r["kind"]), ticket_id=r["ticket_id"],
        payload=json.loads(r["payload"]), due=parse_timestamp(r["due_at"]), state=r["state"],
        attempts=r["attempts"], last_error=r["last_error"])
