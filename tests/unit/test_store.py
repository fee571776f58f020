"""The store on a real SQLite file: durable inbox with dedupe, atomic transactions."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from supportd.store.sqlite import QueuedMail, Store, Tx

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


async def test_concurrent_arrivals_are_all_committed_and_deduplicated(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3")
    keys = [f"mid:{i % 40}@x" for i in range(100)]  # 60 repeats among 100 arrivals
    results = await asyncio.gather(*(
        store.accept(f"mail {k}".encode(), key=k, source="smtp", mail_from="a@x",
                     rcpt_to=["support@example.com"], at=NOW) for k in keys))
    await store.close()

    assert sum(not r.duplicate for r in results) == 40
    by_key: dict[str, set[int]] = {}
    for key, result in zip(keys, results, strict=True):
        by_key.setdefault(key, set()).add(result.inbox_id)
    assert all(len(ids) == 1 for ids in by_key.values())

    reopened = await Store.open(tmp_path / "s.sqlite3")  # on disk, not only in memory
    assert len(await reopened.inbox_ids("new")) == 40
    row = await reopened.inbox_row(results[0].inbox_id)
    assert row is not None and row.raw == b"mail mid:0@x" and row.rcpt_to == (
        "support@example.com",)
    await reopened.close()


async def test_a_failed_transaction_writes_nothing(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3")

    def write_then_fail(tx: Tx) -> None:
        ticket = tx.create_ticket(subject="s", group="tier1", requester="a@x", account=None,
                                  at=NOW)
        tx.add_participant(ticket.id, "a@x", "requester")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.write(write_then_fail)
    assert await store.ticket(1) is None
    assert await store.participants(1) == []
    await store.close()


async def test_migrations_run_once(tmp_path: Path) -> None:
    for _ in range(2):
        store = await Store.open(tmp_path / "s.sqlite3")
        await store.close()


async def test_automatic_mails_are_counted_per_recipient_over_the_last_hour(
        tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3")
    queued: list[tuple[QueuedMail, datetime]] = []

    def queue(n: int, rcpt: str, minutes_ago: int, automatic: bool = True) -> None:
        at = NOW - timedelta(minutes=minutes_ago)
        queued.append((QueuedMail(None, "acknowledgement", automatic, "support@example.com",
                                  rcpt, f"{n}@example.com", b"mail"), at))

    queue(1, "carol@x", 90)  # outside the hour
    queue(2, "carol@x", 59)
    queue(3, "carol@x", 30)
    queue(4, "carol@x", 30)
    queue(5, "carol@x", 0)
    queue(6, "dave@x", 10)
    queue(7, "carol@x", 5, automatic=False)  # a person's relay does not count

    def write_all(tx: Tx) -> None:
        for mail, at in queued:
            tx.queue_mail(mail, at)

    await store.write(write_all)
    since = NOW - timedelta(hours=1)
    assert await store.write(lambda tx: tx.automatic_mails_since("carol@x", since)) == 4
    assert await store.write(lambda tx: tx.automatic_mails_since("dave@x", since)) == 1
    assert await store.write(lambda tx: tx.automatic_mails_since("erin@x", since)) == 0
    # The row of 90 minutes ago was pruned when later mail to carol was queued.
    rows = await store.write(lambda tx: tx._all(
        "SELECT minute FROM auto_mail_minutes WHERE rcpt_to = 'carol@x'", ()))
    assert len(rows) == 3
    await store.close()


async def test_a_long_transaction_sees_another_writer_waiting(tmp_path: Path) -> None:
    """What lets a processing batch commit early when intake waits for the lock."""
    holder = await Store.open(tmp_path / "s.sqlite3")
    waiter = await Store.open(tmp_path / "s.sqlite3")  # as in another process: its own files
    inside = threading.Event()

    def hold(tx: Tx) -> list[bool]:
        inside.set()
        seen = [holder.writer_wanted()]  # nobody waits yet
        deadline = time.monotonic() + 10
        while not holder.writer_wanted() and time.monotonic() < deadline:
            time.sleep(0.001)  # the condition is another thread's flock: polled, with a deadline
        return [*seen, holder.writer_wanted()]

    holding = asyncio.create_task(holder.write(hold))
    await asyncio.to_thread(inside.wait, 10)
    waiting = asyncio.create_task(waiter.write(lambda tx: tx.execute("SELECT 1")))
    assert await holding == [False, True]
    await waiting
    assert waiter.lock_waits == 1 and not holder.writer_wanted()
    await holder.close()
    await waiter.close()
