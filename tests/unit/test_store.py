"""The store on a real SQLite file: durable inbox with dedupe, atomic transactions."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from supportd.store.api import Effect, StoreUnavailable, Tx
from supportd.store.sqlite import CLAIM_EFFECTS
from supportd.store.sqlite import SqliteStore as Store

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
    queued: list[tuple[Effect, str | None, datetime]] = []

    def queue(n: int, rcpt: str, minutes_ago: int, automatic: bool = True) -> None:
        at = NOW - timedelta(minutes=minutes_ago)
        effect = Effect("mail", None, {"template": "acknowledgement", "n": n}, at)
        queued.append((effect, rcpt if automatic else None, at))

    queue(1, "carol@x", 90)  # outside the hour
    queue(2, "carol@x", 59)
    queue(3, "carol@x", 30)
    queue(4, "carol@x", 30)
    queue(5, "carol@x", 0)
    queue(6, "dave@x", 10)
    queue(7, "carol@x", 5, automatic=False)  # a person's relay does not count

    def write_all(tx: Tx) -> None:
        for effect, automatic_to, at in queued:
            tx.add_effect(effect, at=at, automatic_to=automatic_to)

    await store.write(write_all)
    since = NOW - timedelta(hours=1)
    assert await store.write(lambda tx: tx.automatic_mails_since("carol@x", since)) == 4
    assert await store.write(lambda tx: tx.automatic_mails_since("dave@x", since)) == 1
    assert await store.write(lambda tx: tx.automatic_mails_since("erin@x", since)) == 0
    # The row of 90 minutes ago was pruned when later mail to carol was queued.
    rows = await store._all("SELECT minute FROM auto_mail_minutes WHERE rcpt_to = 'carol@x'", ())
    assert len(rows) == 3
    await store.close()


async def test_a_long_transaction_sees_another_writer_waiting(tmp_path: Path) -> None:
    """What lets a processing batch commit early when intake waits for the lock."""
    holder = await Store.open(tmp_path / "s.sqlite3")
    waiter = await Store.open(tmp_path / "s.sqlite3")  # as in another process: its own files
    inside = threading.Event()

    def hold(tx: Tx) -> list[bool]:
        inside.set()
        seen = [tx.others_waiting()]  # nobody waits yet
        deadline = time.monotonic() + 10
        while not tx.others_waiting() and time.monotonic() < deadline:
            time.sleep(0.001)  # the condition is another thread's flock: polled, with a deadline
        return [*seen, tx.others_waiting()]

    holding = asyncio.create_task(holder.write(hold))
    await asyncio.to_thread(inside.wait, 10)
    waiting = asyncio.create_task(waiter.write(lambda tx: tx.ticket(1)))
    assert await holding == [False, True]
    await waiting
    assert waiter.lock_waits == 1 and not holder.writer_wanted()
    await holder.close()
    await waiter.close()


async def test_claimed_inbox_rows_are_nobody_elses_until_the_lease_expires(
        tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3")
    for n in range(3):
        await store.accept(b"Subject: %d\r\n\r\nx\r\n" % n, key=f"k{n}", source="smtp",
                           mail_from="a@x", rcpt_to=["s@x"], at=NOW)
    first = await store.claim_inbox("one", now=NOW, lease=60, limit=2, max_bytes=1_000_000)
    second = await store.claim_inbox("two", now=NOW, lease=60, limit=10, max_bytes=1_000_000)
    assert [r.id for r in first] == [1, 2] and [r.id for r in second] == [3]
    assert not await store.claim_inbox("two", now=NOW, lease=60, limit=10, max_bytes=1_000_000)
    later = NOW + timedelta(seconds=61)  # runner "one" stalled: its rows go to another
    again = await store.claim_inbox("two", now=later, lease=60, limit=10, max_bytes=1_000_000)
    assert [r.id for r in again] == [1, 2, 3]
    await store.close()


async def test_a_claim_skips_its_fsync_and_the_next_write_is_durable_again(
        tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3")
    await store.accept(b"Subject: 1\r\n\r\nx\r\n", key="k1", source="smtp",
                       mail_from="a@x", rcpt_to=["s@x"], at=NOW)
    seen = []

    def claim_and_look(tx: Tx) -> list[object]:
        seen.append(tx._all("PRAGMA synchronous", ())[0][0])  # type: ignore[attr-defined]
        return []
    await store._write(claim_and_look, durable=False)
    assert await store.claim_inbox("one", now=NOW, lease=60, limit=1, max_bytes=1_000_000)
    await store.write(claim_and_look)
    assert seen == [1, 2]  # NORMAL for the claim, FULL (a commit on disk) after it
    await store.close()


async def test_a_claimed_effect_is_taken_once_and_retried_when_due(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3")
    await store.write(lambda tx: tx.add_effect(Effect("mail", None, {"n": 1}, NOW), at=NOW))
    await store.write(lambda tx: tx.add_effect(
        Effect("timer", None, {"n": 2}, NOW + timedelta(minutes=5)), at=NOW))
    [mail] = await store.claim_due("mail", "one", now=NOW, lease=60)
    assert mail.payload == {"n": 1}
    assert not await store.claim_due("mail", "two", now=NOW, lease=60)  # held by "one"
    assert not await store.claim_due("timer", "two", now=NOW, lease=60)  # not due yet
    [timer] = await store.claim_due("timer", "two", now=NOW + timedelta(minutes=5), lease=60)
    assert timer.payload == {"n": 2}
    await store.effect_retry(mail.id, "one", "refused", NOW + timedelta(minutes=1),
                             give_up=False)
    assert await store.next_due("mail") == NOW + timedelta(minutes=1)
    [retried] = await store.claim_due("mail", "two", now=NOW + timedelta(minutes=1), lease=60)
    assert (retried.attempts, retried.last_error) == (1, "refused")
    await store.effect_done(retried.id, "two", NOW + timedelta(minutes=1))
    assert await store.next_due("mail") is None
    await store.close()


async def test_a_claim_takes_the_earliest_due_and_reads_no_more_than_it_takes(
        tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3")
    await store.write(lambda tx: [tx.add_effect(
        Effect("mail", None, {"n": n}, NOW - timedelta(seconds=n)), at=NOW) for n in range(5)])
    claimed = await store.claim_due("mail", "one", now=NOW, lease=60, limit=2)
    assert [e.payload["n"] for e in claimed] == [4, 3]  # retries that fell due first go first
    plan = await store.write(lambda tx: tx._all(  # type: ignore[attr-defined]
        f"EXPLAIN QUERY PLAN {CLAIM_EFFECTS}", ("r", "t", "mail", "t", "t", 50)))
    assert not any("TEMP B-TREE" in row[3] for row in plan), plan  # no sort of every due row
    await store.close()


async def test_a_full_disk_is_store_unavailable_and_writes_nothing(tmp_path: Path) -> None:
    """SQLite's SQLITE_FULL reaches callers as the interface's one StoreUnavailable."""
    store = await Store.open(tmp_path / "s.sqlite3")
    await store._write(lambda tx: tx._run("PRAGMA max_page_count = 1"))  # a disk of one page

    def fill(tx: Tx) -> None:
        tx.add_effect(Effect("mail", None, {"text": "x" * 100_000}, NOW), at=NOW)

    with pytest.raises(StoreUnavailable):
        await store.write(fill)
    assert await store.next_due("mail") is None
    await store.close()

