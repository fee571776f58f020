"""SMTP sessions: the open SMTP/LMTP connections, bounded, and tracked so a shutdown can
drain them.

At most `limit` sessions are open at once (smtp.max_sessions): a connection over it is
greeted `421 4.7.0` instead of `220` and closed (RFC 5321 §3.1). Any 421 a session sends
closes its connection (RFC 5321 §3.8).

On SIGTERM the listeners close first; open sessions carry on for a grace period. After it,
a command that does not continue the transaction in progress gets `421 4.3.2` and the
connection closes, idle sessions get that 421 unasked, and a mail already in its DATA
phase is still received, stored and answered `250`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, AnyStr, cast

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

log = logging.getLogger("supportd.intake")

GOODBYE = b"421 4.3.2 supportd shutting down, try again later\r\n"
# Commands that continue a transaction already begun with MAIL; QUIT is always answered.
CONTINUING = frozenset({"RCPT", "DATA", "QUIT"})


class Sessions:
    def __init__(self, *, limit: int) -> None:
        self.limit = limit  # open sessions at most; a reload may change it
        self.open: set[_Draining] = set()
        self.closing = False
        self._changed = asyncio.Event()

    def protocol(self, *, lmtp: bool, handler: Any, **kwargs: Any) -> SMTP:
        return (_DrainingLMTP if lmtp else _Draining)(handler, sessions=self, **kwargs)

    def closed(self, session: _Draining) -> None:
        self.open.discard(session)
        self._changed.set()

    async def _wait_until_empty(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.open and (left := deadline - loop.time()) > 0:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=left)
            except TimeoutError:
                return

    async def drain(self, *, grace: float, limit: float) -> int:
        """Let sessions end within `limit` seconds, as above; returns how many were cut off."""
        await self._wait_until_empty(grace)
        self.closing = True
        idle = [s for s in self.open if not s.in_transaction]
        for session in idle:
            session.goodbye()
        if self.open:
            log.info("waiting for %d SMTP session(s) to finish their mail", len(self.open))
        await self._wait_until_empty(limit - grace)
        cut = list(self.open)
        for session in cut:
            # No 250 was given, so the client keeps the mail and retries (RFC 5321 §4.5.4.1).
            log.warning("cutting off SMTP session from %s after %ss", session.peer, limit)
            session.abort()
        return len(cut)


class _Draining(SMTP):
    """An aiosmtpd protocol that answers 421 to new commands once its Sessions are closing."""

    def __init__(self, handler: Any, *, sessions: Sessions, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sessions = sessions
        self.turned_away = False  # over the limit: aiosmtpd never saw this connection
        # aiosmtpd looks every command verb up in this table: guarding the lookup guards all.
        self._smtp_methods = _GuardedCommands(self, self._smtp_methods)

    def __dir__(self) -> list[str]:
        # aiosmtpd lists the protocol's members at every connection to find its smtp_ and
        # auth_ methods (inspect.getmembers reads every attribute: 10% of intake's CPU).
        # Only those names matter to it, so they are all that dir() lists.
        return _command_names(type(self))

    def refused(self, name: str) -> bool:
        """Whether command `name` gets 421 now: closing, and it does not finish a mail."""
        return self.sessions.closing and not (name in CONTINUING and
                                              (self.in_transaction or name == "QUIT"))

    async def refuse(self, arg: str | None) -> None:
        self.goodbye()

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    @property
    def peer(self) -> object:
        return self.session.peer if self.session is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.sessions.open) >= self.sessions.limit:
            log.warning("turning away an SMTP connection: %d sessions open (smtp.max_sessions)",
                        len(self.sessions.open))
            self.turned_away = True
            busy = f"421 4.7.0 {self.hostname} too many connections, try again later\r\n"
            cast("asyncio.Transport", transport).write(busy.encode())
            transport.close()
            return
        super().connection_made(transport)
        self.sessions.open.add(self)

    async def push(self, status: AnyStr) -> None:
        await super().push(status)
        # RFC 5321 §3.8: 421 means the server closes the connection.
        code = status[:3] if isinstance(status, str) else status[:3].decode("ascii", "replace")
        if code == "421" and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        # aiosmtpd cancels the session here. A session cancelled before it ever ran (a
        # client that connects and closes at once, as health probes do) never closes its
        # side under uvloop; closing it here ends the connection under either loop.
        if not self.turned_away:
            super().eof_received()
        return False

    def connection_lost(self, error: Exception | None) -> None:
        if self.turned_away:
            return
        self.sessions.closed(self)
        super().connection_lost(error)

    # Not isinstance(asyncio.WriteTransport): uvloop's transports are not, yet write alike.
    def goodbye(self) -> None:
        if (transport := cast("asyncio.Transport | None", self.transport)) is not None:
            transport.write(GOODBYE)
            transport.close()

    def abort(self) -> None:
        if (transport := cast("asyncio.Transport | None", self.transport)) is not None:
            transport.abort()


_COMMAND_NAMES: dict[type, list[str]] = {}


def _command_names(cls: type) -> list[str]:
    if cls not in _COMMAND_NAMES:
        _COMMAND_NAMES[cls] = [name for name in dir(cls) if name.startswith(("smtp_", "auth_"))]
    return _COMMAND_NAMES[cls]


class _GuardedCommands(dict[str, Callable[[str | None], Awaitable[None]]]):
    """A session's command table that hands out `refuse` for the commands it refuses now."""

    def __init__(self, session: _Draining,
                 commands: dict[str, Callable[[str | None], Awaitable[None]]]) -> None:
        super().__init__(commands)
        self.session = session

    def get(self, name: str, default: Any = None) -> Any:  # one lookup per command line
        method = super().get(name, default)
        return self.session.refuse if method is not None and self.session.refused(name) \
            else method


class _DrainingLMTP(_Draining, LMTP):
    pass
