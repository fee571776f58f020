"""Logging: `<N>` syslog priorities for journald, readable lines with a timestamp otherwise."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

# sd-daemon(3): a line starting with <N> is logged at syslog priority N (RFC 5424 §6.2.1).
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
            logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """`<6>supportd.intake: message`; journald adds the time, so the line does not."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>"
        # Each line of a traceback carries the prefix too, so none is logged at info.
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def under_journald(stream: TextIO, env: Mapping[str, str] = os.environ) -> bool:
    """True when `stream` is the journal stream systemd gave us (systemd.exec(5) JOURNAL_STREAM)."""
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def configure_logging(level: str, stream: TextIO = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    if under_journald(stream):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every command line at INFO; supportd logs one line per mail itself.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
