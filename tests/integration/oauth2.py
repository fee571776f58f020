"""A fake OAuth2 authorization server: only its token introspection endpoint (RFC 7662).

Dovecot's oauth2 passdb POSTs `token=...` as a form (`introspection_mode = post`) and reads
`active` and `username` from the JSON answer. The test decides which tokens are valid at any
moment and sees every token that was asked about, in order.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class IntrospectionServer:
    user: str
    valid: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept_only(self, *tokens: str) -> None:
        with self.lock:
            self.valid = set(tokens)

    def tokens_asked(self) -> list[str]:
        with self.lock:
            return list(self.asked)

    async def _introspect(self, request: web.Request) -> web.Response:
        token = str((await request.post()).get("token", ""))
        with self.lock:
            self.asked.append(token)
            active = token in self.valid
        # RFC 7662 §2.2: an inactive token gets only {"active": false}.
        return web.json_response({"active": True, "username": self.user} if active
                                 else {"active": False})

    @contextmanager
    def running(self) -> Iterator[IntrospectionServer]:
        """Serve on a free loopback port from a thread with its own event loop."""
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/introspect", self._introspect)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/introspect"
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.run_until_complete(runner.cleanup())
            loop.close()
