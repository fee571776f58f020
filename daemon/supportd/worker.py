"""Worker: processing and outbound mail, in a process of their own that `supportd run` starts.

Intake answers SMTP on one core while this process turns inbox rows into tickets and sends
what they queue on another; both use the one SQLite file (WAL), and writers take turns at
its flock. It runs at a lower priority (nice 10): under load, answering senders comes
first and processing catches up after. The worker lives and dies with the daemon: the
kernel kills it the moment the daemon dies (PR_SET_PDEATHSIG, so a SIGKILL of the daemon
is a SIGKILL of both), SIGTERM makes it stop after the batch and the mail in hand, SIGHUP
makes it read the config again.

The daemon and the worker share a Unix socket. Daemon to worker: `w` after a mail is
stored (wake up), `m` for a metrics snapshot, `r` and a pickled `Config` (its length, a
newline, the bytes) after a reload the daemon has checked. Worker to daemon: each snapshot
as its length, a newline, and the Prometheus text of the worker's counters.

`supportd worker --standalone` runs the same runners without a daemon, beside it on the
same store (more processing and sending on another machine or core): claims keep each
inbox row and each mail with one runner; SIGHUP makes it read and check the config itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import generate_latest

from supportd.clock import Clock, SystemClock
from supportd.config import Config, ConfigInvalid, load_config
from supportd.metrics import MAILS_PROCESSED, PROCESSING_SECONDS, WORKER_REGISTRY, processing_step
from supportd.outbound.outbox import OutboxWorker, runner_gone, runner_id
from supportd.outbound.templates import load_renderer
from supportd.outbound.transport import MaildirTransport, MxTransport, SmtpTransport, Transport
from supportd.runner import POLL, Runner
from supportd.store.api import Store, StoreUnavailable, open_store
from supportd.tickets.service import TicketService

log = logging.getLogger("supportd.worker")

# Mails per claim and processing transaction: one fsync for all, the write lock held only
# until the mail in hand is done when intake's commit (and the 250s behind it) waits for it
# (Tx.others_waiting); raw mail in memory bounded.
BATCH_MAILS = 50
BATCH_BYTES = 8 * 1024 * 1024
LEASE = 120.0  # seconds claimed inbox rows are ours; parsing is bounded well below that

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


class Processor(Runner):
    """Claims new inbox rows, oldest first, and runs them through the ticket service."""

    retryable = (StoreUnavailable,)  # a full disk must not stop the daemon

    def __init__(self, store: Store, service: TicketService, clock: Clock,
                 outbox: OutboxWorker) -> None:
        super().__init__("processor")
        self.store, self.service, self.clock, self.outbox = store, service, clock, outbox
        self.claimer = runner_id("processor")

    def reload(self, config: Config) -> None:
        self.service = TicketService(config, self.store, self.clock)

    async def step(self) -> float:
        while not self.stopping and (rows := await self.store.claim_inbox(
                self.claimer, now=self.clock.now(), lease=LEASE, limit=BATCH_MAILS,
                max_bytes=BATCH_BYTES)):
            while rows and not self.stopping:  # the claim lapses for rows left at a stop
                started = time.perf_counter()
                with processing_step():  # /healthz reports one that runs too long
                    outcomes = await self.service.process_batch(rows)
                rows = rows[len(outcomes):]
                per_mail = (time.perf_counter() - started) / len(outcomes)
                for outcome in outcomes:
                    PROCESSING_SECONDS.observe(per_mail)
                    MAILS_PROCESSED.labels("failed" if outcome.failed else "done").inc()
                self.outbox.wake()
        # The daemon wakes it for its intake; the poll catches rows others add (`replay`).
        return POLL


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

    def reload(self, config: Config) -> None:
        """Hand the worker a config the daemon has checked."""
        if not self.stopping and not self._writer.is_closing():
            data = pickle.dumps(config)
            self._writer.write(b"r%d\n%s" % (len(data), data))

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


async def run_worker(config: Config, *, socket_fd: int | None, parent_pid: int | None,
                     clock: Clock | None = None) -> None:
    """The worker process: until SIGTERM, or until the daemon that started it is gone.

    Without a daemon (`socket_fd` None: standalone) it also stops on SIGTERM, and SIGHUP
    makes it read and check the config file itself."""
    if parent_pid is not None:
        _die_with(parent_pid)
    try:
        os.nice(WORKER_NICENESS)
    except OSError as error:  # e.g. a seccomp filter without setpriority(2)
        log.warning("worker runs at the daemon's priority: nice(%d) failed: %s",
                    WORKER_NICENESS, error)
    # Signals first: a SIGTERM while starting is a clean stop once started.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    clock = clock or SystemClock()
    store = await open_store(config.store_path)
    outbox = OutboxWorker(store=store, transport=make_transport(config),
                          renderer=load_renderer(config), clock=clock,
                          max_attempts=config.outbound.max_attempts)
    processor = Processor(store, TicketService(config, store, clock), clock, outbox)
    # A worker killed here (SIGKILL, OOM) left claims: free them now, not after the lease.
    if released := await store.release_claims(runner_gone):
        log.info("released %d claim(s) of workers that are gone", released)

    def reload(fresh: Config) -> None:
        processor.reload(fresh)
        outbox.reload(fresh, transport=make_transport(fresh), renderer=load_renderer(fresh))
        log.info("worker reloaded %s", fresh.path)

    def reload_file() -> None:
        try:
            reload(load_config(config.path))
        except ConfigInvalid as invalid:
            for error in invalid.errors:
                log.error("reload rejected, old config kept: %s", error)

    async def stop() -> None:
        await stopping.wait()
        processor.stop()
        outbox.stop()

    helpers = [asyncio.create_task(stop())]
    writer = None
    if socket_fd is None:
        loop.add_signal_handler(signal.SIGHUP, reload_file)
    else:
        # SIGHUP goes to the daemon, which checks the config and hands it over (`r`).
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=socket_fd))
        helpers.append(asyncio.create_task(
            _listen(reader, writer, processor=processor, reload=reload, stopping=stopping)))
    try:
        await asyncio.gather(processor.run(), outbox.run())
    finally:
        for helper in helpers:
            helper.cancel()
        if writer is not None:
            writer.close()
        await store.close()


async def _listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                  processor: Processor, reload: Callable[[Config], None],
                  stopping: asyncio.Event) -> None:
    """The daemon's messages: `w` (wake), `m` (metrics), `r<size>\n<pickled Config>`."""
    try:
        while command := await reader.read(1):
            if command == b"w":
                processor.wake()
            elif command == b"m":
                snapshot = generate_latest(WORKER_REGISTRY)
                writer.write(b"%d\n%s" % (len(snapshot), snapshot))
            elif command == b"r":
                size = int(await reader.readline())
                reload(pickle.loads(await reader.readexactly(size)))  # our own daemon's
    finally:
        stopping.set()  # the daemon closed its end: it is stopping or gone


def _die_with(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the daemon dies; exit if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        raise SystemExit(f"the daemon (pid {parent_pid}) is gone; worker not started")
