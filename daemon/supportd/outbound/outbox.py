"""Outbox worker: renders, composes and sends the mails that `apply` queued as effects.

Rendering and MIME composition happen here, outside any transaction, from the effect's
payload (template, context, headers): the decision that queued a mail never waits for a
template. A mail is sent once: the effect is claimed, then marked done right after the
transport accepts it. A crash between the two can repeat a delivery; the Maildir transport
is idempotent by Message-ID, an SMTP relay may then see the same mail twice (same
Message-ID, so clients show one).

A mail whose template fails to render is held as failed at once, with the error: trying
the same template again cannot help. After a fix, `supportd replay --failed` queues it
again, and the templates are read anew for it.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from supportd.clock import Clock
from supportd.config import Config
from supportd.metrics import OUTBOX_DELIVERIES
from supportd.outbound.compose import Headers, compose_mail
from supportd.outbound.templates import Renderer
from supportd.outbound.transport import DeliveryError, Envelope, Transport
from supportd.runner import POLL, Runner, retry_after
from supportd.store.api import EffectRow, Store, StoreUnavailable

log = logging.getLogger("supportd.outbox")

LEASE = 300.0  # seconds a claimed mail is ours: longer than any transport's timeouts


def runner_id(role: str) -> str:
    """Who claims a row: host, process and role, as `claimed_by` shows it."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}"


def runner_gone(claimer: str) -> bool:
    """Whether the runner named `claimer` was a process on this host that is no more."""
    host, _, rest = claimer.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's: its lease says when it is free
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # A killed worker whose parent died too may stay a zombie where nobody reaps (a container).
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def render_mail(payload: dict[str, Any], renderer: Renderer) -> bytes:
    """The bytes of a queued mail: its template rendered and composed with its headers."""
    if "raw_hex" in payload:  # queued before effects existed: rendered then, sent as is
        return bytes.fromhex(payload["raw_hex"])
    h = payload["headers"]
    headers = Headers(
        from_name=h["from_name"], from_addr=h["from_addr"], to=h["to"], subject=h["subject"],
        reply_to=h["reply_to"], message_id=h["message_id"], in_reply_to=h["in_reply_to"],
        references=tuple(h["references"]), auto_submitted=h["auto_submitted"],
        loop_address=h["loop_address"], date=datetime.fromisoformat(h["date"]))
    return compose_mail(headers, renderer.render(payload["template"], payload["context"]))


class OutboxWorker(Runner):
    retryable = (StoreUnavailable,)  # a full disk must not stop the daemon

    def __init__(self, *, store: Store, transport: Transport, renderer: Renderer, clock: Clock,
                 max_attempts: int) -> None:
        super().__init__("outbox")
        self.store, self.transport, self.renderer, self.clock = store, transport, renderer, clock
        self.max_attempts = max_attempts
        self.claimer = runner_id("outbox")

    def reload(self, config: Config, *, transport: Transport | None = None,
               renderer: Renderer | None = None) -> None:
        self.max_attempts = config.outbound.max_attempts
        self.transport = transport or self.transport
        self.renderer = renderer or self.renderer

    async def step(self) -> float:
        await self.send_due()
        next_due = await self.store.next_due("mail")
        if next_due is None:
            return POLL  # also picks up mail queued by another process (`supportd replay`)
        return max(0.0, min(POLL, (next_due - self.clock.now()).total_seconds()))

    async def send_due(self) -> int:
        """Send every mail that is due now; returns how many were tried."""
        tried = 0
        while rows := await self.store.claim_due("mail", self.claimer, now=self.clock.now(),
                                                 lease=LEASE):
            for row in rows:
                if self.stopping:
                    return tried  # the claims lapse; this or another runner sends them later
                await self._send(row)
                tried += 1
        return tried

    async def _send(self, row: EffectRow) -> None:
        headers = row.payload["headers"]
        envelope = Envelope(mail_from=headers["from_addr"], rcpt_to=(headers["to"],),
                            message_id=headers["message_id"])
        try:
            raw = render_mail(row.payload, self.renderer)
            await self.transport.deliver(envelope, raw)
        except Exception as error:  # a transport bug must not stop the worker: retry later
            attempts = row.attempts + 1
            permanent = isinstance(error, DeliveryError) and error.permanent
            if isinstance(error, jinja2.TemplateError):
                permanent = True
                self.renderer = self.renderer.fresh()  # a fixed template is read anew
            give_up = permanent or attempts >= self.max_attempts
            next_at = self.clock.now() + retry_after(attempts)
            await self.store.effect_retry(row.id, self.claimer, str(error), next_at,
                                          give_up=give_up)
            OUTBOX_DELIVERIES.labels("failed" if give_up else "retry").inc()
            log.warning("ticket=%s outbox=%d to=<%s> %s: %s", row.ticket_id, row.id,
                        headers["to"], "gave up" if give_up else f"retry at {next_at:%H:%M:%S}",
                        error)
            return
        await self.store.effect_done(row.id, self.claimer, self.clock.now())
        OUTBOX_DELIVERIES.labels("sent").inc()
        log.info("ticket=%s outbox=%d %s sent to=<%s>", row.ticket_id, row.id,
                 row.payload["template"], headers["to"])
