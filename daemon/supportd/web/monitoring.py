"""Monitoring: GET /healthz and GET /metrics over aiohttp, on the configured [http] listen."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supportd.clock import Clock
from supportd.metrics import REGISTRY, STEP_STARTED_NAME, STORE
from supportd.store.api import Counts, Store

log = logging.getLogger("supportd.web")

STORE_TIMEOUT = 5.0  # seconds: a store slower than this is reported unhealthy
# The outbox worker looks at due mail at least every second; a minute late means it is stuck.
OUTBOX_LATE = timedelta(minutes=1)
# A batch of normal mail takes milliseconds; 50 mails that each use up their parse budget
# (mail/parse.py) take 100 s. Half a minute means processing stands still.
PROCESSING_LATE = timedelta(seconds=30)


def midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


async def read_counts(store: Store, clock: Clock) -> Counts:
    return await asyncio.wait_for(store.counts(midnight(clock.now())), timeout=STORE_TIMEOUT)


def processing_check(snapshot: bytes, now: datetime, late: timedelta) -> str:
    """The /healthz check of the worker's processing step in hand, read from the worker's
    metrics snapshot (empty when it did not answer): failed once the step runs past `late`."""
    if not snapshot:
        return "failed: the worker did not answer (busy in one step, or stuck)"
    started = next((sample.value for family in text_string_to_metric_families(snapshot.decode())
                    if family.name == STEP_STARTED_NAME for sample in family.samples), 0.0)
    if not started:
        return "ok: idle"
    since = datetime.fromtimestamp(started, UTC)
    running = (now - since).total_seconds()
    if now - since > late:
        return (f"failed: a processing step has run for {running:.0f} s, since "
                f"{since:%Y-%m-%d %H:%M:%S} UTC (more than {late.total_seconds():g} s)")
    return f"ok: a step running for {running:.0f} s"


def monitoring_app(*, store: Store, clock: Clock, workers_running: Callable[[], bool],
                   worker_metrics: Callable[[], Awaitable[bytes]]) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        checks: dict[str, str] = {"loop": "ok"}  # answering at all shows the event loop runs
        checks["workers"] = "ok" if workers_running() else "failed: a worker has stopped"
        try:
            counts = await read_counts(store, clock)
        except Exception as error:
            checks["store"] = f"failed: {type(error).__name__}: {error}"
            checks["outbox"] = "unknown: the store did not answer"
        else:
            checks["store"] = "ok"
            due = counts.next_mail_due
            late = due is not None and clock.now() - due > OUTBOX_LATE
            checks["outbox"] = (f"failed: mail due since {due:%Y-%m-%d %H:%M:%S} UTC not tried"
                                if late and due else
                                f"ok: {counts.outbox.get('queued', 0)} queued")
        checks["processing"] = processing_check(await worker_metrics(), clock.now(),
                                               PROCESSING_LATE)
        healthy = all(v.startswith("ok") for v in checks.values())
        return web.Response(status=200 if healthy else 503, content_type="application/json",
                            text=json.dumps({"status": "ok" if healthy else "failing",
                                             "checks": checks}) + "\n")

    async def metrics(request: web.Request) -> web.Response:
        try:
            STORE.counts = await read_counts(store, clock)
        except Exception as error:  # still export the process's own counters
            log.warning("metrics: reading counts from the store failed: %s", error)
            STORE.counts = None
        # Two expositions of disjoint families, one after the other, are one exposition.
        return web.Response(body=generate_latest(REGISTRY) + await worker_metrics(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve_monitoring(app: web.Application, *, host: str | None = None,
                           port: int | None = None,
                           sock: socket.socket | None = None) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)  # scrapes every few seconds: no line each
    await runner.setup()
    site = (web.SockSite(runner, sock) if sock is not None
            else web.TCPSite(runner, host, port, reuse_address=True))
    await site.start()
    return runner
