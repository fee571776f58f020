"""SMTP intake against the bare aiosmtpd sink: mails/s, end to end, and latency at half rate.

smtp-source (20 sessions, 2 KB mails, 20 000 times BENCH_SCALE) drives the sink, then supportd.
Intake: smtp-source's rate (each 250 comes after the durable commit). End to end: mails over
the seconds until every inbox row is processed (ticket made, acknowledgement queued).
Latency: a paced client at half supportd's intake rate, end of DATA to the 250, p50/p99 (the
client runs on uvloop: its own loop's lag counts in what it measures, so it is kept small).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from servers import inbox_pending, scaled, sink, smtp_source, supportd, wait_until

MAIL = (b"From: <load@customer.example>\r\nTo: <support@example.com>\r\n"
        b"Subject: latency probe\r\nMessage-ID: <%d.%d.probe@customer.example>\r\n\r\n"
        + b"The app returns 502 since noon.\r\n" * 60 + b".\r\n")


async def one_mail(port: int, n: int, stamp: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        for command in (b"EHLO probe\r\n", b"MAIL FROM:<load@customer.example>\r\n",
                        b"RCPT TO:<support@example.com>\r\n", b"DATA\r\n"):
            writer.write(command)
            while (await reader.readline())[3:4] == b"-":
                pass  # a multi-line reply (EHLO) ends with a line of "250 "
        writer.write(MAIL % (stamp, n))
        start = time.perf_counter()
        await writer.drain()
        reply = await reader.readline()
        elapsed = time.perf_counter() - start
        assert reply.startswith(b"250"), reply
        writer.write(b"QUIT\r\n")
        return elapsed
    finally:
        writer.close()


async def paced(port: int, rate: float, count: int) -> list[float]:
    stamp = time.time_ns()
    start = time.perf_counter()
    tasks = []
    for n in range(count):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the load, not waiting for work
        tasks.append(asyncio.create_task(one_mail(port, n, stamp)))
    return list(await asyncio.gather(*tasks))


def main() -> int:
    mails = scaled(20_000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = sink(folder)
        sink_rate = mails / smtp_source(server.port, mails)
        server.stop()

        daemon = supportd(folder)
        start = time.perf_counter()
        intake_rate = mails / smtp_source(daemon.port, mails)
        wait_until(lambda: inbox_pending(folder / "supportd.sqlite3") == 0, timeout=7200,
                   what="every mail processed")
        e2e_rate = mails / (time.perf_counter() - start)
        latencies = uvloop.run(paced(daemon.port, intake_rate / 2, min(mails, 2000)))
        daemon.stop()
    p50 = statistics.median(latencies) * 1000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    rows.append({"bench": "smtp intake", "what": f"{mails} mails, 20 sessions, mails/s",
                 "value": round(intake_rate), "baseline": round(sink_rate),
                 "baseline_is": "bare aiosmtpd sink", "ratio": round(intake_rate / sink_rate, 2),
                 "target": ">= 1.0"})
    rows.append({"bench": "end to end", "what": "mail -> ticket -> ack queued, mails/s",
                 "value": round(e2e_rate), "baseline": round(sink_rate),
                 "baseline_is": "bare aiosmtpd sink", "ratio": round(e2e_rate / sink_rate, 2),
                 "target": ">= 0.6"})
    rows.append({"bench": "latency", "what": f"end of DATA -> 250 at {intake_rate / 2:.0f}/s, "
                 f"p50 {p50:.1f} ms", "value": round(p99, 1), "baseline": 20.0,
                 "baseline_is": "p99 ms vs 20 ms target", "ratio": round(p99 / 20.0, 2),
                 "target": "<= 1.0"})
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
