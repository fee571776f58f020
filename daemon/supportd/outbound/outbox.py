"""Outbox worker: sends the mails that `apply` queued, with retries and backoff.

A mail is sent once: the row is marked sent right after the transport accepts it. A crash
between the two can repeat a delivery; the Maildir transport is idempotent by Message-ID,
an SMTP relay may then see the same mail twice (same Message-ID, so clients show one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from supportd.clock import Clock
from supportd.metrics import OUTBOX_DELIVERIES
from supportd.outbound.transport import DeliveryError, Envelope, Transport
from supportd.store.sqlite import OutboxRow, Store, store_unavailable

log = logging.getLogger("supportd.outbox")


def backoff(attempts: int) -> timedelta:
    """Delay before the next try after `attempts` failures: 1 min doubling to 4 h at most."""
    return timedelta(minutes=min(2 ** max(attempts - 1, 0), 240))


class OutboxWorker:
    def __init__(self, *, store: Store, transport: Transport, clock: Clock,
                 max_attempts: int) -> None:
        self.store, self.transport, self.clock = store, transport, clock
        self.max_attempts = max_attempts
        self.wake = asyncio.Event()
        self.stopping = False

    def stop(self) -> None:
        """Return from run() after the mail being sent now, if any (SIGTERM)."""
        self.stopping = True
        self.wake.set()

    async def run(self) -> None:
        while not self.stopping:
            try:
                await self.send_due()
                if self.stopping:
                    return
                self.wake.clear()
                next_due = await self.store.next_mail_due()
            except Exception as error:
                if not store_unavailable(error):
                    raise
                # A full disk must not stop the daemon: the row stays queued, and a mail sent
                # but not recorded is sent again later (idempotent in a Maildir, see above).
                log.warning("outbox: store unavailable, will retry: %s", error)
                next_due = None
            wait = 1.0  # also picks up mail queued by another process (`supportd replay`)
            if next_due is not None:
                wait = max(0.0, min(wait, (next_due - self.clock.now()).total_seconds()))
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=wait)

    async def send_due(self) -> int:
        """Send every mail that is due now; returns how many were tried."""
        tried = 0
        while rows := await self.store.due_mail(self.clock.now()):
            for row in rows:
                if self.stopping:
                    return tried
                await self._send(row)
                tried += 1
        return tried

    async def _send(self, row: OutboxRow) -> None:
        envelope = Envelope(mail_from=row.mail_from, rcpt_to=(row.rcpt_to,),
                            message_id=row.message_id)
        try:
            await self.transport.deliver(envelope, row.raw)
        except Exception as error:  # a transport bug must not stop the worker: retry later
            attempts = row.attempts + 1
            permanent = isinstance(error, DeliveryError) and error.permanent
            give_up = permanent or attempts >= self.max_attempts
            next_at = self.clock.now() + backoff(attempts)
            await self.store.mark_retry(row.id, str(error), next_at, give_up=give_up)
            OUTBOX_DELIVERIES.labels("failed" if give_up else "retry").inc()
            log.warning("ticket=%s outbox=%d to=<%s> %s: %s", row.ticket_id, row.id, row.rcpt_to,
                        "gave up" if give_up else f"retry at {next_at:%H:%M:%S}", error)
            return
        await self.store.mark_sent(row.id, self.clock.now())
        OUTBOX_DELIVERIES.labels("sent").inc()
        log.info("ticket=%s outbox=%d %s sent to=<%s>", row.ticket_id, row.id, row.kind,
                 row.rcpt_to)
