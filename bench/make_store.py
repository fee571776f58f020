"""Generate a store pre-filled with tickets and messages (1 M and 5 M by default), for scale.

Run: `python bench/make_store.py PATH [--tickets N]`; five messages (and Message-IDs) per
ticket, 3 events, one requester. Written with plain sqlite3 in big transactions: this is
data set-up, not a path supportd takes.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from pathlib import Path

from supportd.store.api import open_store

BATCH = 20_000
AT = "2024-01-01T00:00:00.000000Z"


def fill(path: Path, tickets: int) -> None:
    asyncio.run(_create(path))
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    for first in range(1, tickets + 1, BATCH):
        ids = range(first, min(first + BATCH, tickets + 1))
        db.executemany(
            "INSERT INTO tickets (id, subject, status, priority, group_name, assignee, "
            "requester, account, created_at, updated_at) VALUES (?, ?, 'open', 'normal', "
            "'tier1', NULL, ?, NULL, ?, ?)",
            ((t, f"Problem number {t}", f"c{t % 50_000}@customer.example", AT, AT) for t in ids))
        db.executemany("INSERT INTO participants (ticket_id, email, role) VALUES (?, ?, "
                       "'requester')", ((t, f"c{t % 50_000}@customer.example") for t in ids))
        db.executemany(
            "INSERT INTO messages (ticket_id, kind, author, subject, body, created_at) "
            "VALUES (?, 'customer', ?, ?, ?, ?)",
            ((t, f"c{t % 50_000}@customer.example", f"Problem number {t}",
              "Our app returns 502 since noon, please have a look. " * 8, AT)
             for t in ids for _ in range(5)))
        db.executemany("INSERT INTO message_ids (message_id, ticket_id) VALUES (?, ?)",
                       ((f"{t}.{k}@customer.example", t) for t in ids for k in range(5)))
        db.executemany("INSERT INTO events (ticket_id, at, actor, kind, detail) "
                       "VALUES (?, ?, 'supportd', 'created', 'ticket created')",
                       ((t, AT) for t in ids for _ in range(3)))
        db.commit()
    db.close()


async def _create(path: Path) -> None:
    store = await open_store(path)  # the schema, migrated as supportd does
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--tickets", type=int, default=1_000_000)
    args = parser.parse_args()
    fill(args.path, args.tickets)


if __name__ == "__main__":
    main()
