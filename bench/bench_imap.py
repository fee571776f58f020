"""IMAP intake against a private Dovecot: backlog drain rate and APPEND-to-ticket delay.

1. Fill INBOX with N mails (default 5000, 2 kB each).
2. Baseline: a bare aioimaplib client does what the watcher's network side must do —
   SELECT, UID SEARCH, UID FETCH BODY.PEEK[] in batches — and nothing else.
3. The real daemon (`supportd run`, one [[imap]] mailbox, same batch size) drains the same
   mailbox: fetch, commit to the inbox, MOVE. Timed from its "selected INBOX" log line to its
   "drained N of N" line; the ratio to the baseline is what storing and moving cost.
4. With the daemon idling, APPEND one mail at a time (waiting for the watcher to be back in
   IDLE) and take ticket.created_at minus the moment the APPEND was sent: p50 and p99.

Both runs share this machine and this minute; only the ratio is comparable across days.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aioimaplib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test suite's Dovecot and daemon helpers

from tests.integration.conftest import free_port, mail, wait_for  # noqa: E402
from tests.integration.dovecot import PASSWORD, USER, Dovecot  # noqa: E402
from tests.integration.test_imap import ImapDaemon  # noqa: E402

BATCH = 100


def raw_mail(n: int) -> bytes:
    return mail(subject=f"Bench {n}", body=f"Mail {n}\n" + "lorem ipsum " * 150).as_bytes()


async def raw_fetch(port: int) -> tuple[int, float]:
    """(mails, seconds) for a bare aioimaplib drain of INBOX, without storing anything."""
    imap = aioimaplib.IMAP4("127.0.0.1", port, timeout=60)
    await imap.wait_hello_from_server()
    await imap.login(USER, PASSWORD)
    started = time.perf_counter()
    await imap.select("INBOX")
    found = await imap.uid_search("ALL", charset=None)
    uids = [int(u) for u in found.lines[0].split()]
    fetched = 0
    for i in range(0, len(uids), BATCH):
        batch = uids[i:i + BATCH]
        response = await imap.uid("fetch", f"{batch[0]}:{batch[-1]}", "(UID BODY.PEEK[])")
        fetched += sum(isinstance(line, bytearray) for line in response.lines)
    elapsed = time.perf_counter() - started
    await imap.logout()
    return fetched, elapsed


async def raw_idle_delays(server: Dovecot, samples: int) -> list[float]:
    """Milliseconds from APPEND to the EXISTS push for a bare client in IDLE: the server's floor."""
    imap = aioimaplib.IMAP4("127.0.0.1", server.port, timeout=60)
    await imap.wait_hello_from_server()
    await imap.login(USER, PASSWORD)
    await imap.select("Done")
    delays = []
    with server.client() as client:
        for n in range(samples):
            idle = await imap.idle_start(timeout=60)
            sent = time.time()
            await asyncio.to_thread(client.append, raw_mail(n), "Done")
            while not any(b"EXISTS" in line for line in await imap.wait_server_push()):
                pass
            delays.append((time.time() - sent) * 1000)
            imap.idle_done()
            await idle
    await imap.logout()
    return delays


def percentiles(delays: list[float]) -> str:
    ordered = sorted(delays)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)]
    return f"p50 {statistics.median(ordered):.1f} ms, p99 {p99:.1f} ms"


def log_time(log: str, marker: str) -> float:
    line = next(line for line in log.splitlines() if marker in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=5000, help="backlog size (default 5000)")
    parser.add_argument("--samples", type=int, default=100,
                        help="APPENDs timed while idling (default 100)")
    args = parser.parse_args()

    server = Dovecot()
    server.start()
    folder = Path(tempfile.mkdtemp(prefix="supportd-bench-imap-"))
    daemon = ImapDaemon(folder, free_port(), imap={"port": server.port, "batch_size": BATCH})
    try:
        with server.client() as client:
            client.create("Done")
            for n in range(args.mails):
                client.append(raw_mail(n))
        fetched, raw_seconds = asyncio.run(raw_fetch(server.port))
        assert fetched == args.mails, fetched
        raw_rate = fetched / raw_seconds
        raw_delays = asyncio.run(raw_idle_delays(server, args.samples))

        daemon.start()
        wait_for(lambda: f"drained {args.mails} of {args.mails}" in daemon.log(), timeout=600,
                 what="the backlog drained")
        log = daemon.log()
        drain_seconds = (log_time(log, f"drained {args.mails} of {args.mails}")
                         - log_time(log, "selected INBOX"))
        rate = args.mails / drain_seconds
        wait_for(lambda: daemon.tickets() == args.mails, timeout=1200, what="all tickets")

        delays = []
        for n in range(args.samples):
            wait_for(server.idling, what="the watcher back in IDLE")
            subject = f"Idle {n}"
            with server.client() as client:
                sent = time.time()
                client.append(mail(subject=subject).as_bytes())
            row = wait_for(lambda s=subject: daemon.query(
                "SELECT created_at FROM tickets WHERE subject = ?", s), what=subject)
            delays.append((datetime.fromisoformat(row[0][0]).timestamp() - sent) * 1000)
    finally:
        daemon.stop()
        server.stop()

    print(f"backlog of {args.mails} mails, batches of {BATCH}, Dovecot {server.port}")
    print(f"  raw aioimaplib UID FETCH:   {raw_rate:8.0f} mails/s ({raw_seconds:.2f}s)")
    print(f"  supportd drain to inbox:    {rate:8.0f} mails/s ({drain_seconds:.2f}s, "
          f"fetch + commit + MOVE)")
    print(f"  ratio supportd / raw:       {rate / raw_rate:8.2f}")
    print(f"APPEND to ticket stored while IDLE ({len(delays)} mails): {percentiles(delays)}")
    print(f"  raw aioimaplib APPEND to EXISTS push:  {percentiles(raw_delays)}")
    print(f"  (log: {folder / 'supportd.log'})")


if __name__ == "__main__":
    main()
