"""SMTP and LMTP intake (aiosmtpd): refuse unknown recipients, store raw bytes, then say 250.

Nothing else happens here: no parsing beyond the dedupe key, no ticket logic. A mail gets
`250` only after its bytes are committed to the inbox table; when the store cannot commit,
the client gets `451 4.3.0` and keeps the mail to retry (RFC 5321 §4.2.5). The limits of
[smtp]: `max_recipients` per mail (452 4.5.3 beyond), `max_invalid_recipients` per
connection (then 421 4.7.0 and the connection closes); `max_sessions` is the Sessions'.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref
from collections.abc import Callable
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from supportd.clock import Clock
from supportd.config import Config
from supportd.intake.sessions import Sessions
from supportd.mail.addresses import Addresses
from supportd.mail.parse import dedupe_key
from supportd.metrics import MAILS_RECEIVED
from supportd.store.api import Store

log = logging.getLogger("supportd.intake")


class IntakeHandler:
    def __init__(
        self, *, store: Store, clock: Clock, source: str, config: Config,
        on_accept: Callable[[], None],
    ) -> None:
        self.store, self.clock, self.source, self.on_accept = store, clock, source, on_accept
        self.use(config)
        # Unknown recipients asked for so far, per connection (aiosmtpd's Session).
        self.refused: weakref.WeakKeyDictionary[Session, int] = weakref.WeakKeyDictionary()

    def use(self, config: Config) -> None:
        """Take a checked config's addresses and limits; open sessions get them too."""
        self.addresses: Addresses = config.addresses
        self.max_recipients = config.smtp.max_recipients
        self.max_invalid_recipients = config.smtp.max_invalid_recipients

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        # RFC 5321 §4.5.3.1.10: a full recipients buffer is 452; the client sends the rest
        # in another transaction. Checked first, so it tells a guesser nothing.
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return f"452 4.5.3 too many recipients: at most {self.max_recipients} in one mail"
        if not self.addresses.accepts(address):
            refused = self.refused[session] = self.refused.get(session, 0) + 1
            if refused > self.max_invalid_recipients:
                log.warning("closing session from %s after %d unknown recipients",
                            session.peer, refused)
                return "421 4.7.0 too many unknown recipients, closing connection"
            log.info("refused rcpt=<%s> from=%s", address, session.peer)
            return f"550 5.1.1 <{address}>: no such support address"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        assert isinstance(raw, bytes)  # aiosmtpd keeps the undecoded bytes here
        sender = envelope_sender(envelope.mail_from)
        try:
            accepted = await self.store.accept(
                raw, key=dedupe_key(raw), source=self.source,
                mail_from=sender, rcpt_to=envelope.rcpt_tos,
                at=self.clock.now(),
            )
        except Exception as error:
            log.error("storing mail from=<%s> failed: %s", sender, error)
            MAILS_RECEIVED.labels(self.source, "error").inc()
            reply = "451 4.3.0 storage unavailable, try again later"
        else:
            self.on_accept()
            MAILS_RECEIVED.labels(self.source,
                                  "duplicate" if accepted.duplicate else "stored").inc()
            what = "duplicate of" if accepted.duplicate else "queued as"
            log.info("inbox=%d %s from=<%s> size=%d %s", accepted.inbox_id, self.source,
                     sender, len(raw), "duplicate" if accepted.duplicate else "stored")
            reply = f"250 2.0.0 OK {what} inbox {accepted.inbox_id}"
        if isinstance(server, LMTP):
            # RFC 2033 §4.2: one reply per accepted recipient, in order.
            return "\r\n".join(reply for _ in envelope.rcpt_tos)
        return reply


def envelope_sender(mail_from: str | None) -> str:
    """MAIL FROM as stored: "" for the null reverse-path <>, however the client spelt it.

    aiosmtpd keeps the brackets of an empty path and hands it over as "<>"; processing must
    see the null sender (RFC 5321 §4.5.5: never answered) as such.
    """
    sender = (mail_from or "").strip()
    return "" if sender == "<>" else sender


async def serve(
    handler: IntakeHandler, *, at: tuple[str, int] | socket.socket, hostname: str,
    max_size: int, lmtp: bool, sessions: Sessions,
) -> asyncio.Server:
    """Listen at (host, port) or on a socket systemd passed; `sessions` tracks connections."""
    kwargs: dict[str, Any] = {
        "data_size_limit": max_size, "hostname": hostname, "decode_data": False,
        "enable_SMTPUTF8": True, "ident": "supportd",
    }
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        return sessions.protocol(lmtp=lmtp, handler=handler, **kwargs)

    if isinstance(at, socket.socket):
        return await loop.create_server(protocol, sock=at)
    return await loop.create_server(protocol, host=at[0], port=at[1])
