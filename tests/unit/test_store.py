"""The store on a real SQLite file: durable inbox with dedupe, atomic transactions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supportd.store.sqlite import Store, Tx

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
