"""sd_notify, the watchdog interval, socket-activation guards and journald log lines."""

from __future__ import annotations

import logging
import socket
import sys
import uuid
from pathlib import Path

import pytest

from supportd.config import ConfigInvalid, load_config
from supportd.logs import JournalFormatter, under_journald
from supportd.systemd import Notifier, listen_sockets, watchdog_interval

REPO = Path(__file__).resolve().parents[2]


def test_watchdog_pings_at_half_the_interval_systemd_gives() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0


def test_no_watchdog_without_usec_or_when_it_is_meant_for_another_process() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0


def test_sockets_passed_to_another_process_are_not_taken() -> None:
    assert listen_sockets({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, pid=42) == {}
    assert listen_sockets({}, pid=42) == {}


def test_notify_sends_one_datagram_with_every_field() -> None:
    name = f"supportd-unit-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("3 mails today")
        notifier.close()
        assert listener.recv(4096) == b"READY=1\nSTATUS=3 mails today"


def test_notify_without_a_socket_does_nothing() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    notifier.watchdog()


def _record(level: int, message: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("broken")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("supportd.outbox", level, __file__, 1, message, (), info)


def test_journal_lines_carry_the_syslog_priority_and_no_time() -> None:
    formatter = JournalFormatter()
    assert formatter.format(_record(logging.INFO, "ticket=7 sent")) == (
        "<6>supportd.outbox: ticket=7 sent")
    assert formatter.format(_record(logging.WARNING, "retry")).startswith("<4>")
    assert formatter.format(_record(logging.ERROR, "failed")).startswith("<3>")


def test_every_line_of_a_traceback_keeps_the_error_priority() -> None:
    lines = JournalFormatter().format(_record(logging.ERROR, "inbox=3 failed", exc=True))
    assert len(lines.splitlines()) > 2
    assert all(line.startswith("<3>") for line in lines.splitlines())


def test_journald_is_recognised_by_the_stream_device_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    with path.open("w") as stream:
        stat = path.stat()
        assert under_journald(stream, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
        assert not under_journald(stream, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino + 1}"})
        assert not under_journald(stream, {})


def test_the_config_shipped_for_etc_supportd_is_valid() -> None:
    config = load_config(REPO / "systemd" / "supportd.toml", create_missing_secrets=False)
    assert config.store_path == Path("/var/lib/supportd/supportd.sqlite3")
    assert config.http.listen is not None and config.http.listen.port == 9187


def test_a_grace_period_longer_than_the_shutdown_timeout_is_refused(tmp_path: Path) -> None:
    text = (REPO / "supportd.toml").read_text().replace(
        "[smtp]\n", "[smtp]\nshutdown_grace = 90\nshutdown_timeout = 60\n")
    (tmp_path / "supportd.toml").write_text(text)
    with pytest.raises(ConfigInvalid) as invalid:
        load_config(tmp_path / "supportd.toml")
    assert [str(e) for e in invalid.value.errors] == [
        f"{tmp_path / 'supportd.toml'}: smtp.shutdown_grace: must not exceed "
        "smtp.shutdown_timeout (60), not 90"]
