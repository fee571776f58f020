"""systemd: sd_notify, the watchdog interval and socket activation, read from the environment.

Written by hand rather than with a library: sd_notify is one datagram to a Unix socket and
socket activation is three environment variables (sd_notify(3), sd_listen_fds(3)); the
Python bindings (systemd-python, sdnotify) would add a C build or cover only half of it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("supportd.systemd")

LISTEN_FDS_START = 3  # sd_listen_fds(3): passed sockets start at fd 3


class Notifier:
    """Sends sd_notify(3) state lines to $NOTIFY_SOCKET; does nothing when it is unset."""

    def __init__(self, address: str | None) -> None:
        self._sock: socket.socket | None = None
        self._address = ""
        if address:
            # A leading '@' names a socket in the abstract namespace (unix(7)).
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        """Send `fields` (e.g. "READY=1", "STATUS=...") as one message; a failure is logged."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as error:
            log.warning("sd_notify %s failed: %s", fields[0], error)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # systemd 253+ (Type=notify-reload) wants MONOTONIC_USEC with RELOADING=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping: draining SMTP sessions")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for."""
    usec = env.get("WATCHDOG_USEC", "")
    watched = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if watched and watched != str(pid if pid is not None else os.getpid()):
        return None  # the watchdog is meant for another process (sd_watchdog_enabled(3))
    return int(usec) / 2 / 1_000_000


def listen_sockets(env: Mapping[str, str] = os.environ,
                   pid: int | None = None) -> dict[str, socket.socket]:
    """Sockets passed by systemd socket activation, by FileDescriptorName (sd_listen_fds(3)).

    Unnamed sockets are called "smtp", "lmtp" in the order given; an empty dict means none.
    """
    count = env.get("LISTEN_FDS", "")
    if not count.isdigit() or env.get("LISTEN_PID") != str(pid if pid is not None else os.getpid()):
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":")
    found: dict[str, socket.socket] = {}
    for i in range(int(count)):
        fd = LISTEN_FDS_START + i
        name = names[i] if i < len(names) and names[i] not in ("", "unknown") else (
            ("smtp", "lmtp")[i] if i < 2 else f"fd{fd}")
        os.set_inheritable(fd, False)
        found[name] = socket.socket(fileno=fd)
    return found
