"""Metrics: the Prometheus families supportd exports at GET /metrics (prometheus_client).

Counters and the latency histogram live in the process that counts (they restart at zero,
as Prometheus expects of counters): intake's in the daemon (REGISTRY), processing's and
delivery's in the worker process (WORKER_REGISTRY), which the daemon asks for at each scrape.
Gauges of tickets, inbox and outbox are read from the store at scrape. The worker's gauge of
the processing step in hand lets /healthz tell a step that has run too long.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supportd.store.api import Counts

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
WORKER_REGISTRY = CollectorRegistry()

MAILS_RECEIVED = Counter(
    "supportd_mails_received", "Mails offered to intake, by source and outcome "
    "(stored, duplicate, error: answered 451 and left with the sender)",
    ["source", "outcome"], registry=REGISTRY)
MAILS_PROCESSED = Counter(
    "supportd_mails_processed", "Inbox mails processed, by outcome (done, failed)",
    ["outcome"], registry=WORKER_REGISTRY)
PROCESSING_SECONDS = Histogram(
    "supportd_processing_seconds", "Time to turn one inbox mail into ticket changes",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
    registry=WORKER_REGISTRY)
STEP_STARTED_NAME = "supportd_processing_step_started_seconds"
PROCESSING_STEP_STARTED = Gauge(
    STEP_STARTED_NAME, "Unix time at which the processing step in hand (one batch of inbox "
    "mails) began; 0 when none is", registry=WORKER_REGISTRY)
OUTBOX_DELIVERIES = Counter(
    "supportd_outbox_deliveries", "Outbound delivery attempts, by result "
    "(sent, retry, failed: given up)", ["result"], registry=WORKER_REGISTRY)

for _outcome in ("done", "failed"):
    MAILS_PROCESSED.labels(_outcome)
for _result in ("sent", "retry", "failed"):
    OUTBOX_DELIVERIES.labels(_result)


@contextmanager
def processing_step() -> Iterator[None]:
    """Mark a processing step as in hand while the block runs, for /healthz to see one that
    never ends (finding 6: one mail held processing for 78 s and /healthz said ok)."""
    PROCESSING_STEP_STARTED.set_to_current_time()
    try:
        yield
    finally:
        PROCESSING_STEP_STARTED.set(0)


class StoreCollector(Collector):
    """Gauges from the last `Counts` read from the store; set `counts` before each scrape."""

    def __init__(self) -> None:
        self.counts: Counts | None = None

    def collect(self) -> Iterator[Metric]:
        if self.counts is None:
            return
        tickets = GaugeMetricFamily("supportd_tickets", "Tickets by status", labels=["status"])
        for status in ("new", "open", "pending", "solved", "closed"):
            tickets.add_metric([status], self.counts.tickets.get(status, 0))
        yield tickets
        inbox = GaugeMetricFamily("supportd_inbox_mails",
                            "Inbox mails not yet done (new: waiting, failed: see replay)",
                            labels=["source", "state"])
        for (source, state), n in sorted(self.counts.inbox_pending.items()):
            inbox.add_metric([source, state], n)
        yield inbox
        outbox = GaugeMetricFamily("supportd_outbox_mails",
                             "Outbound mails not sent: queued (the depth) or failed (given up)",
                             labels=["state"])
        for state in ("queued", "failed"):
            outbox.add_metric([state], self.counts.outbox.get(state, 0))
        yield outbox


STORE = StoreCollector()
REGISTRY.register(STORE)
