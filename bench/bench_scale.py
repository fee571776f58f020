"""Scale: supportd on a store with 1 M tickets / 5 M messages (times BENCH_SCALE) vs an empty one.

Intake rate (smtp-source) and end-to-end rate, the threading lookup (Message-ID -> ticket)
time, and the daemon's resident memory after the run, each big-store against empty-store.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from make_store import fill
from servers import inbox_pending, scaled, smtp_source, supportd, wait_until


def lookup_seconds(store: Path, tickets: int) -> float:
    """Mean time of the threading query for one mail's References (5 ids, most unknown)."""
    db = sqlite3.connect(store)
    rng = random.Random(1)
    start = time.perf_counter()
    for _ in range(2000):
        ids = [f"{rng.randint(1, max(tickets, 1))}.{rng.randint(0, 9)}@customer.example"
               for _ in range(5)]
        db.execute(f"SELECT message_id, ticket_id FROM message_ids WHERE message_id IN "
                   f"({','.join('?' * len(ids))})", ids).fetchall()
    db.close()
    return (time.perf_counter() - start) / 2000


def run(folder: Path, tickets: int, mails: int) -> dict[str, float]:
    store = folder / "supportd.sqlite3"
    if tickets:
        fill(store, tickets)
    daemon = supportd(folder)
    start = time.perf_counter()
    intake = mails / smtp_source(daemon.port, mails)
    wait_until(lambda: inbox_pending(store) == 0, timeout=7200, what="every mail processed")
    e2e = mails / (time.perf_counter() - start)
    rss = daemon.rss_mb()
    daemon.stop()
    return {"intake": intake, "e2e": e2e, "rss": rss, "lookup": lookup_seconds(store, tickets)}


def main() -> int:
    tickets, mails = scaled(1_000_000), scaled(5_000)
    with tempfile.TemporaryDirectory() as empty_dir, tempfile.TemporaryDirectory() as big_dir:
        empty = run(Path(empty_dir), 0, mails)
        big = run(Path(big_dir), tickets, mails)
    name = f"{tickets} tickets / {5 * tickets} messages vs empty"
    rows: list[dict[str, Any]] = [
        {"bench": "scale intake", "what": f"{name}, mails/s", "value": round(big["intake"]),
         "baseline": round(empty["intake"]), "baseline_is": "empty store",
         "ratio": round(big["intake"] / empty["intake"], 2), "target": ">= 0.9"},
        {"bench": "scale end to end", "what": f"{name}, mails/s", "value": round(big["e2e"]),
         "baseline": round(empty["e2e"]), "baseline_is": "empty store",
         "ratio": round(big["e2e"] / empty["e2e"], 2), "target": None},
        {"bench": "scale threading", "what": "Message-ID lookup, µs per mail",
         "value": round(big["lookup"] * 1e6, 1), "baseline": round(empty["lookup"] * 1e6, 1),
         "baseline_is": "empty store", "ratio": round(big["lookup"] / empty["lookup"], 2),
         "target": None},
        {"bench": "scale memory", "what": "daemon RSS after the run, MB",
         "value": round(big["rss"], 1), "baseline": round(empty["rss"], 1),
         "baseline_is": "empty store", "ratio": round(big["rss"] / empty["rss"], 2),
         "target": None},
    ]
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
