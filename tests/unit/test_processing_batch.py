"""Processing in batches on a real SQLite store: one transaction, a savepoint per mail."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from supportd.clock import FixedClock
from supportd.config import load_config
from supportd.store.api import InboxRow, Tx
from supportd.store.sqlite import SqliteStore as Store
from supportd.tickets.decide import Plan
from supportd.tickets.service import TicketService

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
[support]
addresses = ["support@example.com"]
hmac_key_file = "hmac.key"
[store]
path = "s.sqlite3"
[outbound]
templates = "{templates}"
[[groups]]
name = "tier1"
[[agents]]
email = "alice@example.com"
name = "Alice"
"""


def raw_mail(n: int) -> bytes:
    return (f"From: Carol <carol{n}@customer.example>\r\nTo: support@example.com\r\n"
            f"Subject: problem {n}\r\nMessage-ID: <{n}@customer.example>\r\n\r\n"
            f"Our app is down ({n}).\r\n").encode()


async def open_service(tmp_path: Path) -> tuple[Store, TicketService, list[InboxRow]]:
    (tmp_path / "supportd.toml").write_text(CONFIG.format(templates=REPO / "templates"))
    config = load_config(tmp_path / "supportd.toml")
    store = await Store.open(config.store_path)
    clock = FixedClock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    for n in range(1, 4):
        await store.accept(raw_mail(n), key=f"mid:{n}@customer.example", source="smtp",
                           mail_from=f"carol{n}@customer.example",
                           rcpt_to=["support@example.com"], at=clock.now())
    rows = await store.claim_inbox("test", now=clock.now(), lease=60, limit=50,
                                   max_bytes=1_000_000)
    return store, TicketService(config, store, clock), rows


async def test_a_mail_that_raises_is_undone_alone_and_marked_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, service, rows = await open_service(tmp_path)
    apply = TicketService.apply

    def apply_then_fail_on_the_second(self: TicketService, tx: Tx, plan: Plan) -> int:
        ticket_id = apply(self, tx, plan)  # writes its ticket, message, outbox rows
        if plan.message is not None and plan.message.inbox_id == rows[1].id:
            raise RuntimeError("a bug met by this mail only")
        return ticket_id

    monkeypatch.setattr(TicketService, "apply", apply_then_fail_on_the_second)
    outcomes = await service.process_batch(rows)

    assert [o.failed for o in outcomes] == [False, True, False]
    states = {r[0]: (r[1], r[2]) for r in await store._all(
        "SELECT id, state, error FROM inbox", ())}
    assert states[rows[0].id] == ("done", None) and states[rows[2].id] == ("done", None)
    assert states[rows[1].id] == ("failed", "RuntimeError: a bug met by this mail only")
    # The failed mail's own writes were rolled back to its savepoint; the others' kept.
    requesters = [r[0] for r in await store._all("SELECT requester FROM tickets ORDER BY id", ())]
    assert requesters == ["carol1@customer.example", "carol3@customer.example"]
    acknowledged = [r[0] for r in await store._all(
        "SELECT rcpt_to FROM outbox WHERE kind = 'acknowledgement' ORDER BY id", ())]
    assert acknowledged == ["carol1@customer.example", "carol3@customer.example"]
    await store.close()


async def test_a_row_done_since_it_was_read_is_left_alone(tmp_path: Path) -> None:
    """Two runners that both hold a row (one's lease ran out) apply it once."""
    store, service, rows = await open_service(tmp_path)
    first = await service.process_batch(rows)
    assert [o.inbox_id for o in first] == [r.id for r in rows]
    again = await service.process_batch(rows)
    assert [o.summary for o in again] == ["already processed"] * 3
    tickets = await store._all("SELECT count(*) FROM tickets", ())
    assert tickets[0][0] == 3
    await store.close()
