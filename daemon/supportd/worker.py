"""Worker: processing and outbound mail, in a process of their own that `supportd run` starts.

Intake answers SMTP on one core while this process turns inbox rows into tickets and sends
what they queue on another; both use the one SQLite file (WAL), and writers take turns at
its flock. It runs at a lower priority (nice 10): under load, answering senders comes
first and processing catches up after. The worker lives and dies with the daemon: the
kernel kills it the moment the daemon dies (PR_SET_PDEATHSIG, so a SIGKILL of the daemon
is a SIGKILL of both), SIGTERM makes it stop after the batch and the mail in hand, SIGHUP
makes it read the config again.

The daemon and the worker share a Unix socket. Daemon to worker: `w` after a mail is
stored (wake up), `m` for a metrics snapshot. Worker to daemon: each snapshot as its
length, a newline, and the Prometheus text of the worker's counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from prometheus_client import generate_latest

from supportd.clock import Clock, SystemClock
from supportd.config import Config, ConfigInvalid, load_config
from supportd.metrics import MAILS_PROCESSED, PROCESSING_SECONDS, WORKER_REGISTRY
from supportd.outbound.outbox import OutboxWorker
from supportd.outbound.templates import load_renderer
from supportd.outbound.transport import MaildirTransport, MxTransport, SmtpTransport, Transport
from supportd.store.sqlite import InboxRow, Store
from supportd.tickets.service import TicketService

log = logging.getLogger("supportd.worker")

# Mails per processing transaction: one fsync for all, the write lock held at most about
# BATCH_SECONDS, and only until the mail in hand is done when intake's commit (and the 250s
# behind it) waits for the lock (Store.writer_wanted); raw mail in memory bounded.
BATCH_MAILS = 50
BATCH_BYTES = 8 * 1024 * 1024
BATCH_SECONDS = 0.02

# Variables that are the daemon's alone: the worker must not answer systemd as if it were it.
DAEMON_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
               "LISTEN_FDNAMES")
PR_SET_PDEATHSIG = 1  # prctl(2)
# A sender waits for each 250; nobody waits on a processing batch the same way. Under load
# the daemon's intake gets the CPU first and the worker catches up after (nice(2)).
WORKER_NICENESS = 10
SNAPSHOT_TIMEOUT = 5.0  # seconds a metrics scrape waits for the worker


def make_transport(config: Config) -> Transport:
    out = config.outbound
    if out.transport == "smtp" and out.smarthost is not None:
        s = out.smarthost
        return SmtpTransport(host=s.host, port=s.port, starttls=s.starttls,
                             username=s.username, password=s.password, tls_verify=s.tls_verify)
    if out.transport == "mx":
        return MxTransport(helo=config.smtp.hostname)
    return MaildirTransport(out.maildir)


class Processor:
    """Runs every new inbox row through the ticket service, oldest first, in batches."""

    def __init__(self, store: Store, service: TicketService, outbox: OutboxWorker) -> None:
        self.store, self.service, self.outbox = store, service, outbox
        self.wake = asyncio.Event()
        self.stopping = False

    def stop(self) -> None:
        """Return from run() once the batch in process now is committed (SIGTERM)."""
        self.stopping = True
        self.wake.set()

    async def run(self) -> None:
        while not self.stopping:
            self.wake.clear()
            rows: list[InboxRow] = []
            while not self.stopping and (rows := rows or await self.store.new_inbox_rows(
                    BATCH_MAILS, BATCH_BYTES)):
                started = time.perf_counter()
                outcomes = await self.service.process_batch(rows, budget=BATCH_SECONDS)
                if outcomes[0].retry:
                    break  # the store cannot write now (disk full): try again after the wait
                rows = rows[len(outcomes):]
                per_mail = (time.perf_counter() - started) / len(outcomes)
                for outcome in outcomes:
                    PROCESSING_SECONDS.observe(per_mail)
                    MAILS_PROCESSED.labels("failed" if outcome.failed else "done").inc()
                self.outbox.wake.set()
            with contextlib.suppress(TimeoutError):
                # The wake-up covers the daemon's intake; the timeout catches rows added by
                # others (`supportd replay` in another process).
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)


class WorkerProcess:
    """The daemon's side: start the worker, wake it, ask it for metrics, stop it."""

    def __init__(self, process: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.process, self._reader, self._writer = process, reader, writer
        self._asking = asyncio.Lock()
        self.stopping = False

    @classmethod
    async def start(cls, config_path: Path) -> WorkerProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k not in DAEMON_ONLY}
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "supportd.cli", "--config", str(config_path),
                "--log-level", logging.getLevelName(logging.getLogger().level), "worker",
                "--socket-fd", str(theirs.fileno()), "--parent-pid", str(os.getpid()),
                pass_fds=(theirs.fileno(),), env=env)
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        log.info("worker process %d started", process.pid)
        return cls(process, reader, writer)

    def wake(self) -> None:
        """New mail is in the inbox."""
        if not self.stopping and not self._writer.is_closing():
            self._writer.write(b"w")

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Ask the worker to finish its batch and mail in hand, then exit (SIGTERM)."""
        self.stopping = True
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)

    async def run(self) -> None:
        """Wait for the worker to exit; it exiting unasked is the daemon's failure too."""
        code = await self.process.wait()
        self._writer.close()
        if not self.stopping:
            raise RuntimeError(f"worker process {self.process.pid} exited unasked ({code})")
        log.info("worker process %d stopped (%d)", self.process.pid, code)

    async def metrics(self) -> bytes:
        """The worker's counters as Prometheus text; empty if it does not answer in time."""
        try:
            async with self._asking:
                self._writer.write(b"m")
                async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                    size = int(await self._reader.readline())
                    return await self._reader.readexactly(size)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as error:
            log.warning("metrics: the worker process did not answer: %s", error)
            return b""


async def run_worker(config: Config, *, socket_fd: int, parent_pid: int,
                     clock: Clock | None = None) -> None:
    """The worker process: until SIGTERM, or until the daemon that started it is gone."""
    _die_with(parent_pid)
    try:
        os.nice(WORKER_NICENESS)
    except OSError as error:  # e.g. a seccomp filter without setpriority(2)
        log.warning("worker runs at the daemon's priority: nice(%d) failed: %s",
                    WORKER_NICENESS, error)
    # Signals first: a SIGTERM while starting is a clean stop once started.
    stopping = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)
    clock = clock or SystemClock()
    store = await Store.open(config.store_path)
    outbox = OutboxWorker(store=store, transport=make_transport(config), clock=clock,
                          max_attempts=config.outbound.max_attempts)
    processor = Processor(store, TicketService(config, store, clock, load_renderer(config)),
                          outbox)
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=socket_fd))

    async def stop() -> None:
        await stopping.wait()
        processor.stop()
        outbox.stop()

    async def reload() -> None:
        nonlocal config
        while True:
            await reloads.get()
            try:
                fresh = load_config(config.path)
                renderer = load_renderer(fresh)
            except ConfigInvalid as invalid:  # the daemon logs the same errors: say it once
                log.debug("reload rejected: %s", invalid)
                continue
            config = fresh
            processor.service = TicketService(config, store, clock, renderer)
            outbox.transport = make_transport(config)
            outbox.max_attempts = config.outbound.max_attempts

    async def listen() -> None:
        while data := await reader.read(4096):
            if b"w" in data:
                processor.wake.set()
            for _ in range(data.count(b"m")):
                snapshot = generate_latest(WORKER_REGISTRY)
                writer.write(b"%d\n%s" % (len(snapshot), snapshot))
        stopping.set()  # the daemon closed its end: it is stopping or gone

    helpers = [asyncio.create_task(job()) for job in (stop, reload, listen)]
    try:
        await asyncio.gather(processor.run(), outbox.run())
    finally:
        for helper in helpers:
            helper.cancel()
        writer.close()
        await store.close()


def _die_with(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the daemon dies; exit if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        raise SystemExit(f"the daemon (pid {parent_pid}) is gone; worker not started")
