"""The worker process: it lives and dies with the daemon, and its counters reach /metrics."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.integration.conftest import Daemon, mail, wait_for, worker_pid


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; its parent has not reaped it yet


def test_a_sigkilled_daemon_takes_its_worker_with_it(daemon: Daemon) -> None:
    worker = worker_pid(daemon)
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait(timeout=10)
    wait_for(lambda: not alive(worker), what="the worker to die with the daemon")


def test_a_worker_that_dies_stops_the_daemon_with_an_error(daemon: Daemon) -> None:
    os.kill(worker_pid(daemon), signal.SIGKILL)
    assert daemon.process is not None
    assert daemon.process.wait(timeout=30) != 0
    assert "worker process" in daemon.log() and "exited unasked" in daemon.log()


def test_mail_accepted_by_the_daemon_is_processed_by_the_worker(daemon: Daemon) -> None:
    assert daemon.send(mail(subject="Through both processes")) == {}
    daemon.new_mail(2)
    [row] = daemon.query("SELECT subject FROM tickets")
    assert row["subject"] == "Through both processes"
