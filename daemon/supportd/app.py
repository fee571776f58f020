"""App: the daemon's parts wired together and run until told to stop.

The daemon is two processes: this one receives (SMTP, LMTP, IMAP), answers systemd and
serves /healthz and /metrics; the worker process it starts (supportd.worker) processes
what was received and sends what that queues.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Mapping, Sequence
from typing import Protocol

from aiohttp import web

from supportd.clock import Clock, SystemClock
from supportd.config import (
    OPEN_LISTENER,
    Config,
    ConfigError,
    ConfigInvalid,
    Listen,
    load_config,
)
from supportd.intake.imap import MailboxWatcher
from supportd.intake.sessions import Sessions
from supportd.intake.smtp import IntakeHandler, serve
from supportd.outbound.templates import load_renderer
from supportd.store.api import open_store
from supportd.systemd import Notifier, listen_sockets, watchdog_interval
from supportd.web.monitoring import monitoring_app, read_counts, serve_monitoring
from supportd.worker import WorkerProcess

log = logging.getLogger("supportd")


TRUST_KEYS = {"smtp": "smtp.trust_authentication_results",
              "lmtp": "smtp.lmtp_trust_authentication_results"}


def open_to_others(config: Config,
                   listening: Mapping[str, Sequence[socket.socket]]) -> list[ConfigError]:
    """Listeners `config` trusts with Authentication-Results although they are bound where
    others than the MTA reach them: what load_config cannot see, a socket from systemd or
    a listener still bound to its old address after a reload. Unix sockets are local."""
    errors = []
    for name, sockets in listening.items():
        if not config.trusts_authentication_results(name):
            continue
        for sock in sockets:
            if sock.family == socket.AF_UNIX:
                continue
            host, port = sock.getsockname()[:2]
            if not Listen(host, port).is_loopback:
                errors.append(ConfigError(str(config.path), TRUST_KEYS[name], (
                    f"the {name.upper()} listener is bound to {host}:{port}, not a loopback "
                    f"address: {OPEN_LISTENER}")))
    return errors


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Settings a reload cannot apply: bound sockets and the open store stay as they are."""
    pairs = {
        "smtp.listen": (old.smtp.listen, new.smtp.listen),
        "smtp.lmtp_listen": (old.smtp.lmtp_listen, new.smtp.lmtp_listen),
        "smtp.hostname": (old.smtp.hostname, new.smtp.hostname),
        "smtp.max_message_size": (old.smtp.max_message_size, new.smtp.max_message_size),
        "store.path": (old.store_path, new.store_path),
        "imap": (old.imap, new.imap),
        "http.listen": (old.http.listen, new.http.listen),
    }
    return [key for key, (before, after) in pairs.items() if before != after]


class Worker(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None:
        """Make run() return after the job in hand."""


STATUS_INTERVAL = 10.0  # seconds between STATUS= updates to systemd


async def run_daemon(config: Config, clock: Clock | None = None) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the config; systemd hears of each step."""
    notifier = Notifier.from_environment()
    try:
        await Supportd(config, clock or SystemClock(), notifier).run()
    finally:
        notifier.close()


class Supportd:
    """The running daemon: its parts, the config they use, and its life from READY to exit."""

    def __init__(self, config: Config, clock: Clock, notifier: Notifier) -> None:
        self.config, self.clock, self.notifier = config, clock, notifier
        self.sessions = Sessions(limit=config.smtp.max_sessions)
        self.handlers: list[IntakeHandler] = []
        self.servers: list[asyncio.Server] = []
        self.listening: dict[str, Sequence[socket.socket]] = {}  # "smtp", "lmtp": bound
        self.events: asyncio.Queue[str] = asyncio.Queue()  # "reload", "stop", "worker"

    async def run(self) -> None:
        load_renderer(self.config)  # broken templates stop the start here, with exit code 2
        self.store = await open_store(self.config.store_path)  # migrated before the worker
        tasks: list[asyncio.Task[None]] = []
        helpers: list[asyncio.Task[None]] = []
        web_runner = None
        workers: dict[str, Worker] = {}
        try:
            # Before the worker and the listeners: a SIGTERM that comes while starting is a
            # clean stop once ready.
            loop = asyncio.get_running_loop()
            for sig, event in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"),
                               (signal.SIGHUP, "reload")):
                loop.add_signal_handler(sig, self.events.put_nowait, event)
            self.worker = await WorkerProcess.start(self.config.path)
            workers["worker"] = self.worker
            for mailbox in self.config.imap:
                workers[f"imap:{mailbox.name}"] = MailboxWatcher(
                    mailbox, self.store, self.clock, on_accept=self.worker.wake)
            passed = listen_sockets()
            await self._listen(passed)
            if errors := open_to_others(self.config, self.listening):
                raise ConfigInvalid(errors)  # exit code 2, before READY
            if self.config.http.listen is not None or "http" in passed:
                web_runner = await self._serve_http(passed.get("http"), tasks)
            for name, worker in workers.items():
                tasks.append(asyncio.create_task(worker.run(), name=name))
                tasks[-1].add_done_callback(lambda _: self.events.put_nowait("worker"))
            if (interval := watchdog_interval()) is not None:
                helpers.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
            self.notifier.ready(await self.status_line())
            log.info("supportd ready: store %s, outbound %s", self.config.store_path,
                     self.config.outbound.transport)
            if self.notifier.enabled:
                helpers.append(asyncio.create_task(self._report_status(), name="status"))
            while (event := await self.events.get()) == "reload":
                await self.reload()
            await self._shutdown(workers, tasks, why=event)
        finally:
            for server in self.servers:
                server.close()
            for worker in workers.values():
                worker.stop()  # no-op after a clean shutdown; else the worker exits with us
            for task in [*tasks, *helpers]:
                task.cancel()
            await asyncio.gather(*tasks, *helpers, return_exceptions=True)
            if web_runner is not None:
                await web_runner.cleanup()
            await self.store.close()
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def _listen(self, passed: dict[str, socket.socket]) -> None:
        smtp = self.config.smtp
        listeners: list[tuple[str, tuple[str, int] | socket.socket, bool]] = [
            ("smtp", passed.get("smtp") or (smtp.listen.host, smtp.listen.port), False)]
        if "lmtp" in passed:
            listeners.append(("lmtp", passed["lmtp"], True))
        elif smtp.lmtp_listen is not None:
            listeners.append(("lmtp", (smtp.lmtp_listen.host, smtp.lmtp_listen.port), True))
        for name in sorted(set(passed) - {"smtp", "lmtp", "http"}):
            log.warning("ignoring socket %r from systemd: supportd knows smtp, lmtp, http", name)
        for name, at, lmtp in listeners:
            handler = IntakeHandler(store=self.store, clock=self.clock, source=name,
                                    config=self.config, on_accept=self.worker.wake)
            server = await serve(
                handler, at=at, hostname=smtp.hostname, max_size=smtp.max_message_size,
                lmtp=lmtp, sessions=self.sessions)
            self.servers.append(server)
            self.listening[name] = server.sockets
            self.handlers.append(handler)
            log.info("listening for %s on %s", name.upper(),
                     "a socket from systemd" if isinstance(at, socket.socket)
                     else f"{at[0]}:{at[1]}")

    async def _serve_http(self, sock: socket.socket | None,
                          tasks: list[asyncio.Task[None]]) -> web.AppRunner:
        app = monitoring_app(store=self.store, clock=self.clock,
                             workers_running=lambda: not any(t.done() for t in tasks),
                             worker_metrics=self.worker.metrics)
        listen = self.config.http.listen
        if sock is not None or listen is None:
            runner = await serve_monitoring(app, sock=sock)
            log.info("serving /healthz and /metrics on a socket from systemd")
        else:
            runner = await serve_monitoring(app, host=listen.host, port=listen.port)
            log.info("serving /healthz and /metrics on http://%s:%d", listen.host, listen.port)
        return runner

    async def reload(self) -> None:
        """SIGHUP: read the config file again; a broken one is logged and the old one kept."""
        self.notifier.reloading()
        path = self.config.path
        try:
            config = load_config(path)
            load_renderer(config)
            if errors := open_to_others(config, self.listening):
                raise ConfigInvalid(errors)
        except ConfigInvalid as invalid:
            for error in invalid.errors:
                log.error("reload rejected, old config kept: %s", error)
        else:
            self.apply(config)
            self.worker.reload(config)
            log.info("reloaded %s: %d agents, %d groups, support at %s", path,
                     len(config.agents), len(config.groups), ", ".join(config.support.addresses))
        self.notifier.ready(await self.status_line())

    def apply(self, config: Config) -> None:
        """Put a checked config into intake; open sessions stay open."""
        for key in restart_only_changes(self.config, config):
            log.warning("reload: %s changed; that takes effect at the next restart", key)
        for handler in self.handlers:
            handler.use(config)
        self.sessions.limit = config.smtp.max_sessions
        self.config = config

    async def _shutdown(self, workers: dict[str, Worker], tasks: list[asyncio.Task[None]],
                        *, why: str) -> None:
        """Stop listening, let SMTP transactions and the jobs in hand finish, then return."""
        self.notifier.stopping()
        log.info("supportd stopping (%s): %d SMTP session(s) open", why, len(self.sessions.open))
        for server in self.servers:
            server.close()
        for worker in workers.values():
            worker.stop()
        smtp = self.config.smtp
        loop = asyncio.get_running_loop()
        deadline = loop.time() + smtp.shutdown_timeout  # all of it, so TimeoutStopSec holds
        cut = await self.sessions.drain(grace=smtp.shutdown_grace, limit=smtp.shutdown_timeout)
        _, late = await asyncio.wait(tasks, timeout=max(1.0, deadline - loop.time()))
        for task in late:
            log.warning("worker %s did not stop in %ds; cancelled", task.get_name(),
                        smtp.shutdown_timeout)
        log.info("supportd stopped: SMTP drained, %d session(s) cut off; %d write "
                 "transaction(s) waited %.1f s in all for the store lock", cut,
                 self.store.lock_waits, self.store.lock_wait_seconds)

    async def status_line(self) -> str:
        try:
            counts = await read_counts(self.store, self.clock)
        except Exception as error:
            return f"store unavailable: {error}"
        failed = counts.outbox.get("failed", 0)
        return (f"{counts.mails_since} mails today, {counts.open_tickets} open tickets, "
                f"outbox {counts.outbox.get('queued', 0)} queued"
                + (f", {failed} failed" if failed else ""))

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            self.notifier.status(await self.status_line())

    async def _watchdog(self, interval: float) -> None:
        # Sent from the event loop itself: a loop that hangs stops the pings (systemd.service(5)).
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)
