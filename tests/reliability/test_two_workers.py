"""Two worker processes on one SQLite store: claims keep every mail applied once, sent once.

The daemon's own worker and a `supportd worker --standalone` beside it share one backlog:
the mails are taken in while both workers are stopped (SIGSTOP), and both are let loose on
them at once (SIGCONT), so they contend for the same rows rather than take turns.
Each process logs what it did (`ticket=N inbox=M ...` when a mail is applied, `ticket=N
outbox=K <template> sent` when a mail is delivered), so the logs say which worker did what.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.integration.conftest import REPO, mail, worker_pid
from tests.reliability.conftest import ConfiguredDaemon, Smarthost, free_port, wait_for

MAILS = 600
CONNECTIONS = 4
APPLIED = re.compile(r" supportd\.tickets: ticket=\d+ inbox=(\d+) ")
SENT = re.compile(r" supportd\.outbox: ticket=\d+ outbox=(\d+) \S+ sent to=")


def send_share(port: int, first: int) -> None:
    """One SMTP connection's share of the mails: every CONNECTIONS-th, from `first`."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        for n in range(first, MAILS, CONNECTIONS):
            # A sender each: every mail is a new ticket, and no acknowledgement is held back.
            client.send_message(mail(sender=f"c{n}@customer.example", subject=f"problem {n}",
                                     body=f"Mail {n} of the two-workers test."))


def standalone_worker(daemon: ConfiguredDaemon, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "supportd.cli", "--config", str(daemon.config_path),
             "worker", "--standalone"], stdout=out, stderr=out, cwd=daemon.folder,
            env={**os.environ, "PYTHONPATH": str(REPO / "daemon")})


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()  # only when the test failed before its own SIGTERM
        process.wait(timeout=10)


def resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have stopped for good since
        os.kill(pid, signal.SIGCONT)


def has_store_open(process: subprocess.Popen[bytes], store: Path) -> bool:
    """Whether the worker opened the store (its runners start right after): /proc fds."""
    if process.poll() is not None:
        raise AssertionError(f"the standalone worker exited with {process.returncode}")
    fds = Path(f"/proc/{process.pid}/fd")
    return any(os.path.realpath(fd) == str(store.resolve()) for fd in fds.iterdir())


def ids(pattern: re.Pattern[str], log: str) -> list[int]:
    return [int(n) for n in pattern.findall(log)]


def test_two_workers_on_one_store_apply_each_mail_once_and_send_each_once(
    tmp_path: Path, smarthost_factory: Callable[..., Smarthost]
) -> None:
    host = smarthost_factory()
    daemon = ConfiguredDaemon(tmp_path, free_port(), smarthost_port=host.port,
                              auto_mail_limit=1000)
    worker_log = tmp_path / "standalone.log"
    with contextlib.ExitStack() as started:  # a failed step stops what was started before it
        daemon.start()
        started.callback(daemon.stop)
        ours_pid = worker_pid(daemon)
        worker = standalone_worker(daemon, worker_log)
        started.callback(stop_process, worker)
        wait_for(lambda: has_store_open(worker, tmp_path / daemon.store_file),
                 what="the standalone worker to open the store")
        for pid in (ours_pid, worker.pid):
            os.kill(pid, signal.SIGSTOP)
            started.callback(resume, pid)  # should a step below fail

        with ThreadPoolExecutor(CONNECTIONS) as senders:  # intake answers without the worker
            list(senders.map(send_share, [daemon.port] * CONNECTIONS, range(CONNECTIONS)))
        assert daemon.query("SELECT count(*) AS n FROM inbox WHERE state = 'new'")[0]["n"] \
            == MAILS  # the whole backlog waits for a worker
        for pid in (ours_pid, worker.pid):
            resume(pid)

        def drained() -> bool:
            return daemon.inbox_settled() and not daemon.query(
                "SELECT 1 FROM outbox WHERE state = 'queued'")
        wait_for(drained, timeout=180, what="the inbox processed and the outbox drained")

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker_log.read_text()

        inbox = daemon.query(
            "SELECT i.id, i.state, count(m.id) AS messages FROM inbox i "
            "LEFT JOIN messages m ON m.inbox_id = i.id GROUP BY i.id")
        assert len(inbox) == MAILS
        assert {(r["state"], r["messages"]) for r in inbox} == {("done", 1)}
        assert daemon.query("SELECT count(*) AS n FROM tickets")[0]["n"] == MAILS

        queued = daemon.query("SELECT message_id, state FROM outbox")
        assert {r["state"] for r in queued} == {"sent"}
        assert len(queued) >= MAILS  # at least an acknowledgement a mail
        delivered = Counter(m["message_id"].strip("<>") for m in host.received())
        assert [k for k, n in delivered.items() if n > 1] == []  # none delivered twice
        assert set(delivered) == {r["message_id"] for r in queued}  # and none left out

        # Which worker did what, by each process's own log lines.
        ours, theirs = daemon.log(), worker_log.read_text()
        applied = {"daemon's worker": ids(APPLIED, ours), "standalone": ids(APPLIED, theirs)}
        sent = {"daemon's worker": ids(SENT, ours), "standalone": ids(SENT, theirs)}
        print(f"\ntwo workers: applied {', '.join(f'{k} {len(v)}' for k, v in applied.items())}; "
              f"sent {', '.join(f'{k} {len(v)}' for k, v in sent.items())}")
        for done, total in ((applied, len(inbox)), (sent, len(queued))):
            both = [*done["daemon's worker"], *done["standalone"]]
            assert len(both) == len(set(both)) == total  # each row by one worker, once
            assert all(done.values()), done  # and each worker did some of it
