"""App: the daemon's parts wired together and run until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from supportd.clock import Clock, SystemClock
from supportd.config import Config
from supportd.intake.smtp import IntakeHandler, serve
from supportd.mail.auth import token_in_address, verify_token
from supportd.outbound.outbox import OutboxWorker
from supportd.outbound.templates import Renderer
from supportd.outbound.transport import MaildirTransport, MxTransport, SmtpTransport, Transport
from supportd.store.sqlite import Store
from supportd.tickets.service import TEMPLATE_KINDS, TicketService

log = logging.getLogger("supportd")


def make_transport(config: Config) -> Transport:
    out = config.outbound
    if out.transport == "smtp" and out.smarthost is not None:
        s = out.smarthost
        return SmtpTransport(host=s.host, port=s.port, starttls=s.starttls,
                             username=s.username, password=s.password, tls_verify=s.tls_verify)
    if out.transport == "mx":
        return MxTransport(helo=config.smtp.hostname)
    return MaildirTransport(out.maildir)


def recipient_check(config: Config):  # type: ignore[no-untyped-def]
    support = frozenset(config.support.addresses)

    def is_our_recipient(address: str) -> bool:
        address = address.lower()
        if address in support:
            return True
        token = token_in_address(address, support)
        return token is not None and verify_token(
            config.support.hmac_key, token, config.agent_by_email) is not None

    return is_our_recipient


class Processor:
    """Runs every new inbox row through the ticket service, oldest first."""

    def __init__(self, store: Store, service: TicketService, outbox: OutboxWorker) -> None:
        self.store, self.service, self.outbox = store, service, outbox
        self.wake = asyncio.Event()

    async def run(self) -> None:
        while True:
            self.wake.clear()
            for inbox_id in await self.store.inbox_ids("new"):
                await self.service.process(inbox_id)
                self.outbox.wake.set()
            with contextlib.suppress(TimeoutError):
                # The event covers our own intake; the timeout catches rows added by others
                # (`supportd replay` in another process).
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)


async def run_daemon(config: Config, clock: Clock | None = None) -> None:
    clock = clock or SystemClock()
    renderer = Renderer(config.outbound.templates)
    problems = renderer.check(TEMPLATE_KINDS)
    if problems:
        raise RuntimeError("templates: " + "; ".join(problems))
    store = await Store.open(config.store_path)
    outbox = OutboxWorker(store=store, transport=make_transport(config), clock=clock,
                          max_attempts=config.outbound.max_attempts)
    processor = Processor(store, TicketService(config, store, clock, renderer), outbox)
    servers = []
    listeners = [(config.smtp.listen, False)]
    if config.smtp.lmtp_listen is not None:
        listeners.append((config.smtp.lmtp_listen, True))
    for listen, lmtp in listeners:
        handler = IntakeHandler(store=store, clock=clock, source="lmtp" if lmtp else "smtp",
                                is_our_recipient=recipient_check(config),
                                on_accept=processor.wake.set)
        servers.append(await serve(handler, host=listen.host, port=listen.port,
                                   hostname=config.smtp.hostname,
                                   max_size=config.smtp.max_message_size, lmtp=lmtp))
        log.info("listening for %s on %s:%d", "LMTP" if lmtp else "SMTP", listen.host,
                 listen.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(processor.run(), name="processor"),
             asyncio.create_task(outbox.run(), name="outbox")]
    log.info("supportd ready: store %s, outbound %s", config.store_path,
             config.outbound.transport)
    stopping = asyncio.create_task(stop.wait(), name="stop")
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    log.info("supportd stopping")
    for server in servers:
        server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        await server.wait_closed()
    await store.close()
    for task in tasks:
        if task in done and (error := task.exception()) is not None:
            raise error
