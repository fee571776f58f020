"""SMTP sessions: the open SMTP/LMTP connections, tracked so a shutdown can drain them.

On SIGTERM the listeners close first; open sessions carry on for a grace period. After it,
a command that does not continue the transaction in progress gets `421 4.3.2` and the
connection closes (RFC 5321 §3.8), idle sessions get that 421 unasked, and a mail already
in its DATA phase is still received, stored and answered `250`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

log = logging.getLogger("supportd.intake")

GOODBYE = b"421 4.3.2 supportd shutting down, try again later\r\n"
# Commands that continue a transaction already begun with MAIL; QUIT is always answered.
CONTINUING = frozenset({"RCPT", "DATA", "QUIT"})


class Sessions:
    def __init__(self) -> None:
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
        # aiosmtpd dispatches through this table; wrapping it guards every command verb.
        self._smtp_methods = {name: self._guard(name, method)
                              for name, method in self._smtp_methods.items()}

    def _guard(self, name: str, method: Callable[[str | None], Awaitable[None]]
               ) -> Callable[[str | None], Awaitable[None]]:
        @functools.wraps(method)
        async def guarded(arg: str | None) -> None:
            if self.sessions.closing and not (name in CONTINUING and
                                              (self.in_transaction or name == "QUIT")):
                self.goodbye()
                return
            await method(arg)
        return guarded

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    @property
    def peer(self) -> object:
        return self.session.peer if self.session is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.sessions.open.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.sessions.closed(self)
        super().connection_lost(error)

    def goodbye(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.write(GOODBYE)
            self.transport.close()

    def abort(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()


class _DrainingLMTP(_Draining, LMTP):
    pass
