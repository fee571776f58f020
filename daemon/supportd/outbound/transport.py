"""Outbound transports: hand a finished mail to a Maildir, a smarthost, or the recipients' MX.

The outbox worker calls one transport per site with the message bytes and its envelope and
records the result; a transport either returns (the mail is handed on) or raises
`DeliveryError`, whose `permanent` flag tells the worker whether retrying can help.
SMTP is spoken by aiosmtplib and MX records come from dnspython; the Maildir writer is
hand-written because it is twenty lines of the Maildir spec (link into new/, fsync).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import string
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver

MxResolver = Callable[[str], Awaitable[list[tuple[int, str]]]]


@dataclass(frozen=True)
class Envelope:
    mail_from: str  # "" for the null sender
    rcpt_to: tuple[str, ...]
    message_id: str  # without brackets; a stable key for idempotence

    def __post_init__(self) -> None:
        if not self.message_id:
            raise ValueError("Envelope.message_id is empty; it is the idempotence key")
        if not self.rcpt_to:
            raise ValueError(f"Envelope for <{self.message_id}> has no recipients")
        # RFC 5321 §4.1.2: a path holds no line breaks; one would inject commands or headers.
        for address in (self.mail_from, *self.rcpt_to):
            if "\r" in address or "\n" in address:
                raise ValueError(f"address {address!r} contains a line break")


class DeliveryError(Exception):
    """`permanent` True for 5xx answers (do not retry), False for temporary failures."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    async def deliver(self, envelope: Envelope, raw: bytes) -> None: ...


# ---------------------------------------------------------------------------------------
# Maildir

_MAILDIR_SAFE = frozenset((string.ascii_letters + string.digits + "-_.@+=").encode())
_MAILDIR_NAME_MAX = 200  # leaves room for the tmp/ suffix and ":2,S" under NAME_MAX (255)


def maildir_name(message_id: str) -> str:
    """A file name for `message_id`: the same id always gives the same name, distinct ids
    give distinct names (percent-encoding, or a digest once too long)."""
    name = "".join(
        chr(byte) if byte in _MAILDIR_SAFE else f"%{byte:02X}" for byte in message_id.encode()
    )
    if name.startswith("."):
        name = "%2E" + name[1:]  # Maildir readers skip dot files
    if len(name) > _MAILDIR_NAME_MAX:
        digest = hashlib.sha256(message_id.encode()).hexdigest()[:32]
        name = f"{name[: _MAILDIR_NAME_MAX - 33]}~{digest}"  # "~" never occurs unencoded
    return name


def line_ending_of(raw: bytes) -> bytes:
    """The line ending the message uses (CRLF, LF or CR), so added headers match it."""
    for index, byte in enumerate(raw):
        if byte == 0x0A:
            return b"\n"
        if byte == 0x0D:
            return b"\r\n" if raw[index + 1 : index + 2] == b"\n" else b"\r"
    return b"\n"


def envelope_header_lines(envelope: Envelope, eol: bytes) -> bytes:
    """`Return-Path:` and `X-Envelope-To:` lines that show a Maildir reader the envelope."""
    # RFC 5322 §3.6.7: Return-Path is "<" addr-spec ">", "<>" for the null sender.
    lines = [f"Return-Path: <{envelope.mail_from}>"]
    current = "X-Envelope-To: " + envelope.rcpt_to[0]
    for address in envelope.rcpt_to[1:]:
        # RFC 5322 §2.1.1: keep lines under 78 characters by folding between addresses.
        if len(current) + len(address) + 2 > 78:
            lines.append(current + ",")
            current = " " + address
        else:
            current += ", " + address
    lines.append(current)
    return b"".join(line.encode() + eol for line in lines)


class MaildirTransport:
    """Writes each mail into a Maildir, once per Message-ID, so a person can read it."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def deliver(self, envelope: Envelope, raw: bytes) -> None:
        data = envelope_header_lines(envelope, line_ending_of(raw)) + raw
        try:
            await asyncio.to_thread(self._write_once, maildir_name(envelope.message_id), data)
        except OSError as exc:
            raise DeliveryError(f"maildir {self._path}: {exc}", permanent=False) from exc

    def _write_once(self, name: str, data: bytes) -> None:
        for folder in ("tmp", "new", "cur"):
            (self._path / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._already_delivered(name):
            return
        tmp = self._path / "tmp" / f"{name}.{os.getpid()}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            # Maildir spec: link() never overwrites, so a concurrent duplicate leaves one file.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self._path / "new" / name)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_directory(self._path / "new")

    def _already_delivered(self, name: str) -> bool:
        # A reader moves mail from new/ to cur/ and appends ":2,<flags>" to its name.
        cur = self._path / "cur"
        return (
            (self._path / "new" / name).exists()
            or (cur / name).exists()
            or any(cur.glob(f"{name}:*"))
        )


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# SMTP (shared by the smarthost and the MX transport)


def _is_permanent(code: int) -> bool:
    return 500 <= code <= 599  # RFC 5321 §4.2.1: 5yz is a permanent negative reply


def delivery_error_from(where: str, exc: Exception) -> DeliveryError:
    """Classify an aiosmtplib or network failure at `where` (host:port) as a DeliveryError."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return refusal_error(where, {r.recipient: (r.code, r.message) for r in exc.recipients})
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Like Postfix's smtp_sasl_auth_soft_bounce: a wrong password is ours to fix; keep mail.
        return DeliveryError(
            f"{where} refused our login: {exc.code} {exc.message}", permanent=False
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return DeliveryError(
            f"{where} answered {exc.code} {exc.message}", permanent=_is_permanent(exc.code)
        )
    return DeliveryError(f"{where}: {type(exc).__name__}: {exc}", permanent=False)


def refusal_error(where: str, refused: dict[str, tuple[int, str]]) -> DeliveryError:
    """Recipients refused at RCPT; permanent only when every refusal was a 5xx."""
    answers = "; ".join(f"<{rcpt}>: {code} {message}" for rcpt, (code, message) in refused.items())
    return DeliveryError(
        f"{where} refused recipients: {answers}",
        permanent=all(_is_permanent(code) for code, _ in refused.values()),
    )


def _mail_options(client: aiosmtplib.SMTP, envelope: Envelope, raw: bytes) -> list[str]:
    options = []
    if not raw.isascii() and client.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")  # RFC 6152 §3: declare an 8-bit body
    if not all(address.isascii() for address in (envelope.mail_from, *envelope.rcpt_to)):
        options.append("SMTPUTF8")  # RFC 6531 §3.4: UTF-8 mailbox names need SMTPUTF8
    return options


async def _send(
    client: aiosmtplib.SMTP, where: str, envelope: Envelope, rcpt_to: Sequence[str], raw: bytes
) -> dict[str, tuple[int, str]]:
    """One SMTP transaction; returns the recipients refused while others were accepted."""
    try:
        async with client:
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
            refused, _ = await client.sendmail(
                envelope.mail_from,
                rcpt_to,
                raw,
                mail_options=_mail_options(client, envelope, raw),
            )
    except (aiosmtplib.SMTPException, OSError) as exc:  # OSError covers TLS and timeouts
        raise delivery_error_from(where, exc) from exc
    except ValueError as exc:  # aiosmtplib's verdict on an address it cannot send
        raise DeliveryError(f"{where}: {exc}", permanent=True) from exc
    return {rcpt: (response.code, response.message) for rcpt, response in refused.items()}


class SmtpTransport:
    """Relays every mail through one smarthost, with STARTTLS and AUTH as configured."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        starttls: bool,
        username: str | None,
        password: str | None,
        timeout: float = 30.0,
        tls_verify: bool = True,
    ) -> None:
        self._host = host
        self._port = port
        self._starttls = starttls
        self._username = username
        self._password = password
        self._timeout = timeout
        self._tls_verify = tls_verify

    async def deliver(self, envelope: Envelope, raw: bytes) -> None:
        where = f"{self._host}:{self._port}"
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            start_tls=self._starttls,
            validate_certs=self._tls_verify,
            username=self._username,
            password=self._password,
            timeout=self._timeout,
        )
        refused = await _send(client, where, envelope, envelope.rcpt_to, raw)
        if refused:
            raise refusal_error(where, refused)


# ---------------------------------------------------------------------------------------
# Direct delivery to the recipients' MX hosts


def recipients_by_domain(rcpt_to: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Recipients grouped by their domain (lower-cased: domains are case-insensitive)."""
    groups: dict[str, list[str]] = {}
    for address in rcpt_to:
        local, at, domain = address.rpartition("@")
        if not (at and local and domain):
            raise DeliveryError(f"<{address}> has no domain to deliver to", permanent=True)
        groups.setdefault(domain.lower(), []).append(address)
    return {domain: tuple(addresses) for domain, addresses in groups.items()}


def mx_delivery_order(
    domain: str, records: Sequence[tuple[int, str]], rng: random.Random
) -> list[str]:
    """The hosts to try for `domain`, best first, from its (preference, exchange) records."""
    hosts = [(preference, exchange.rstrip(".")) for preference, exchange in records]
    if hosts and all(not exchange for _, exchange in hosts):
        # RFC 7505 §3: a lone "0 ." MX says the domain accepts no mail at all.
        raise DeliveryError(f"{domain} accepts no mail (null MX, RFC 7505)", permanent=True)
    if not hosts:
        return [domain]  # RFC 5321 §5.1: no MX records, the domain itself is the implicit MX
    # RFC 5321 §5.1: lowest preference first, shuffled among equals to spread the load.
    ordered = sorted((p, rng.random(), exchange) for p, exchange in hosts if exchange)
    return list(dict.fromkeys(exchange for _, _, exchange in ordered))


class DnsMxResolver:
    """Looks up a domain's MX records with dnspython; the default for MxTransport."""

    def __init__(self, resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self._resolver = resolver or dns.asyncresolver.Resolver()

    async def __call__(self, domain: str) -> list[tuple[int, str]]:
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise DeliveryError(f"{domain} does not exist (NXDOMAIN)", permanent=True) from exc
        except dns.resolver.NoAnswer:
            await self._require_address(domain)
            return []
        except dns.exception.DNSException as exc:
            raise DeliveryError(f"MX lookup for {domain} failed: {exc}", permanent=False) from exc
        return [(record.preference, record.exchange.to_text()) for record in answer]

    async def _require_address(self, domain: str) -> None:
        # RFC 5321 §5.1: without MX records the domain's A/AAAA is the implicit MX, if any.
        for rdtype in ("A", "AAAA"):
            try:
                await self._resolver.resolve(domain, rdtype)
                return
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.DNSException as exc:
                raise DeliveryError(
                    f"{rdtype} lookup for {domain} failed: {exc}", permanent=False
                ) from exc
        raise DeliveryError(f"{domain} has no MX, A or AAAA record", permanent=True)


class MxTransport:
    """Delivers straight to each recipient domain's MX hosts, trying them in order."""

    def __init__(
        self,
        *,
        resolve_mx: MxResolver | None = None,
        port: int = 25,
        timeout: float = 30.0,
        helo: str | None = None,
    ) -> None:
        self._resolve_mx = resolve_mx or DnsMxResolver()
        self._port = port
        self._timeout = timeout
        self._helo = helo
        self._rng = random.Random()

    async def deliver(self, envelope: Envelope, raw: bytes) -> None:
        failures: list[DeliveryError] = []
        # Every domain gets its attempt even when another fails, so one bad domain
        # does not hold back the others.
        for domain, rcpt_to in recipients_by_domain(envelope.rcpt_to).items():
            try:
                await self._deliver_to_domain(domain, rcpt_to, envelope, raw)
            except DeliveryError as failure:
                failures.append(failure)
        if failures:
            raise DeliveryError(
                "; ".join(str(failure) for failure in failures),
                permanent=all(failure.permanent for failure in failures),
            )

    async def _deliver_to_domain(
        self, domain: str, rcpt_to: tuple[str, ...], envelope: Envelope, raw: bytes
    ) -> None:
        hosts = mx_delivery_order(domain, await self._resolve_mx(domain), self._rng)
        temporary: list[str] = []
        for host in hosts:
            where = f"{host}:{self._port}"
            client = aiosmtplib.SMTP(
                hostname=host,
                port=self._port,
                start_tls=None,  # opportunistic: STARTTLS when offered (RFC 3207)
                validate_certs=False,  # RFC 7435: unauthenticated TLS beats plaintext
                local_hostname=self._helo,
                timeout=self._timeout,
            )
            try:
                refused = await _send(client, where, envelope, rcpt_to, raw)
            except DeliveryError as failure:
                if failure.permanent:
                    raise
                temporary.append(str(failure))  # RFC 5321 §5.1: go on to the next MX
                continue
            if refused:  # the mail went through for the others; another MX would repeat it
                raise refusal_error(where, refused)
            return
        raise DeliveryError(
            f"no MX host of {domain} took the mail: " + "; ".join(temporary), permanent=False
        )
