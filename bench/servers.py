"""What the benches drive: the sink and supportd as processes, and smtp-source as the load."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("BENCH_SCALE", "1"))

CONFIG = """
[support]
addresses = ["support@example.com"]
auto_mail_limit = 100000000
hmac_key_file = "hmac.key"
[smtp]
listen = "127.0.0.1:{port}"
max_message_size = 1000000
[store]
path = "{store}"
[outbound]
maildir = "outbox"
templates = "{templates}"
[[groups]]
name = "tier1"
[[agents]]
email = "alice@example.com"
name = "Alice"
"""


def scaled(count: int) -> int:
    return max(100, int(count * SCALE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


class Server:
    """A process listening on a loopback port; stopped with SIGTERM."""

    def __init__(self, args: list[str], port: int, cwd: Path) -> None:
        self.port = port
        with open(cwd / "server.log", "ab") as log:  # BENCH_LOG_LEVEL=INFO to see more
            self.process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL,
                                            stderr=log)
        wait_until(lambda: listening(port), timeout=30, what=f"{args[1]} to listen")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def sink(folder: Path) -> Server:
    port = free_port()
    return Server([sys.executable, str(REPO / "bench" / "sink.py"), "--port", str(port)],
                  port, folder)


def supportd(folder: Path, store: str = "supportd.sqlite3") -> Server:
    port = free_port()
    (folder / "supportd.toml").write_text(CONFIG.format(
        port=port, store=store, templates=REPO / "templates"))
    return Server([sys.executable, "-m", "supportd.cli", "--config", "supportd.toml",
                   "--log-level", os.environ.get("BENCH_LOG_LEVEL", "WARNING"), "run"],
                  port, folder)


def smtp_source(port: int, mails: int, *, sessions: int = 20, size: int = 2048) -> float:
    """Send `mails` with Postfix's smtp-source; returns the seconds it took."""
    tool = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    start = time.perf_counter()
    subprocess.run([tool, "-s", str(sessions), "-m", str(mails), "-l", str(size),
                    "-f", "load@customer.example", "-t", "support@example.com",
                    f"127.0.0.1:{port}"], check=True, timeout=3600)
    return time.perf_counter() - start


def inbox_pending(store: Path) -> int:
    db = sqlite3.connect(store, timeout=30)
    try:
        return int(db.execute("SELECT count(*) FROM inbox WHERE state = 'new'").fetchone()[0])
    finally:
        db.close()
