"""Compose: an outbound mail's MIME bytes, with the headers that keep threads and stop loops."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from supportd.outbound.templates import Rendered


@dataclass(frozen=True)
class Headers:
    from_name: str
    from_addr: str
    to: str
    subject: str
    reply_to: str
    message_id: str  # without brackets
    in_reply_to: str | None
    references: tuple[str, ...]
    auto_submitted: str | None  # RFC 3834: "auto-replied" / "auto-generated"; None for a person's
    loop_address: str  # X-Loop: lets us recognise our own mail coming back
    date: datetime


def new_message_id(ticket_id: int | None, domain: str) -> str:
    return f"supportd.{ticket_id or 0}.{secrets.token_hex(8)}@{domain}"


def one_line(text: str) -> str:
    """Header text from input: never a raw CR, LF or other control character."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def compose_mail(headers: Headers, body: Rendered) -> bytes:
    msg = EmailMessage()
    msg["From"] = Address(display_name=one_line(headers.from_name), addr_spec=headers.from_addr)
    msg["To"] = headers.to
    msg["Subject"] = one_line(headers.subject)
    msg["Date"] = format_datetime(headers.date)
    msg["Message-ID"] = f"<{headers.message_id}>"
    if headers.in_reply_to:
        msg["In-Reply-To"] = f"<{headers.in_reply_to}>"
    if headers.references:
        msg["References"] = " ".join(f"<{r}>" for r in headers.references)
    msg["Reply-To"] = headers.reply_to
    if headers.auto_submitted:
        msg["Auto-Submitted"] = headers.auto_submitted
        # Exchange and others honour this rather than RFC 3834: no out-of-office answers.
        msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Loop"] = headers.loop_address
    msg.set_content(body.text)
    msg.add_alternative(body.html, subtype="html")
    return msg.as_bytes(policy=SMTP)
