"""Outbound transports against real servers on loopback: aiosmtpd for SMTP, a tiny DNS stub."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from supportd.outbound.transport import (
    DeliveryError,
    DnsMxResolver,
    Envelope,
    MxTransport,
    SmtpTransport,
)

MAIL = (
    b"From: support@example.org\r\nTo: ann@example.com\r\nSubject: Hi\r\n\r\n"
    b"Hello.\r\n.a line that starts with a dot\r\n"
)
ENVELOPE = Envelope(
    mail_from="support@example.org", rcpt_to=("ann@example.com",), message_id="m1@example.org"
)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool


@dataclass
class Handler:
    """An aiosmtpd handler that records mail and answers with the replies it is given."""

    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply is not None:
            return self.data_reply
        received = Received(
            envelope.mail_from,
            list(envelope.rcpt_tos),
            envelope.original_content,
            bool(session.ssl),
        )
        self.received.append(received)
        return "250 2.0.0 queued"


@asynccontextmanager
async def smtp_server(
    handler: Handler, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[int]:
    """An aiosmtpd server on loopback (a free port by default), in the test's own event loop."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mx.test", loop=loop, **options), host, port
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="session")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate (no CA trusts it)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not found; needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=mx.test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def smarthost(port: int, **options: Any) -> SmtpTransport:
    settings: dict[str, Any] = {"starttls": False, "username": None, "password": None}
    return SmtpTransport(host="127.0.0.1", port=port, timeout=5.0, **(settings | options))


# --- smarthost ----------------------------------------------------------------------------


async def test_smarthost_delivers_the_mail_byte_for_byte() -> None:
    handler = Handler()
    async with smtp_server(handler) as port:
        await smarthost(port).deliver(ENVELOPE, MAIL)
    [received] = handler.received
    assert (received.mail_from, received.rcpt_tos) == ("support@example.org", ["ann@example.com"])
    assert received.content == MAIL


async def test_lf_mail_goes_out_with_crlf_line_endings() -> None:
    handler = Handler()
    async with smtp_server(handler) as port:
        await smarthost(port).deliver(ENVELOPE, MAIL.replace(b"\r\n", b"\n"))
    assert handler.received[0].content == MAIL


async def test_null_sender_is_sent_as_empty_reverse_path() -> None:
    handler = Handler()
    bounce = Envelope(mail_from="", rcpt_to=("ann@example.com",), message_id="b@x")
    async with smtp_server(handler) as port:
        await smarthost(port).deliver(bounce, MAIL)
    assert handler.received[0].mail_from == "<>"  # aiosmtpd's spelling of MAIL FROM:<>


AUTH_WITHOUT_TLS = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@AUTH_WITHOUT_TLS
async def test_smarthost_logs_in_when_given_a_username() -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret", handled=False)

    handler = Handler()
    options: dict[str, Any] = {
        "authenticator": authenticator,
        "auth_required": True,
        "auth_require_tls": False,
    }
    async with smtp_server(handler, **options) as port:
        await smarthost(port, username="relay", password="s3cret").deliver(ENVELOPE, MAIL)
    assert logins == [(b"relay", b"s3cret")]
    assert len(handler.received) == 1


@AUTH_WITHOUT_TLS
async def test_wrong_smarthost_password_is_temporary_and_says_so() -> None:
    def authenticator(*args: Any) -> Any:
        return AuthResult(success=False, handled=False)

    options: dict[str, Any] = {
        "authenticator": authenticator,
        "auth_required": True,
        "auth_require_tls": False,
    }
    async with smtp_server(Handler(), **options) as port:
        with pytest.raises(DeliveryError, match="refused our login: 535") as failure:
            await smarthost(port, username="relay", password="wrong").deliver(ENVELOPE, MAIL)
    assert failure.value.permanent is False


async def test_550_at_data_is_permanent_and_quotes_the_server() -> None:
    handler = Handler(data_reply="550 5.7.1 message rejected as spam")
    async with smtp_server(handler) as port:
        with pytest.raises(
            DeliveryError, match=re.escape("550 5.7.1 message rejected as spam")
        ) as failure:
            await smarthost(port).deliver(ENVELOPE, MAIL)
    assert failure.value.permanent is True


async def test_451_at_data_is_temporary() -> None:
    handler = Handler(data_reply="451 4.3.0 try again later")
    async with smtp_server(handler) as port:
        with pytest.raises(DeliveryError, match="451") as failure:
            await smarthost(port).deliver(ENVELOPE, MAIL)
    assert failure.value.permanent is False


async def test_a_refused_connection_is_temporary(closed_port: int) -> None:
    with pytest.raises(DeliveryError) as failure:
        await smarthost(closed_port).deliver(ENVELOPE, MAIL)
    assert failure.value.permanent is False


async def test_one_recipient_refused_with_550_is_permanent_while_the_other_gets_it() -> None:
    handler = Handler(refuse_rcpt={"gone@example.com": "550 5.1.1 no such user"})
    envelope = Envelope(
        mail_from="s@example.org", rcpt_to=("ann@example.com", "gone@example.com"), message_id="m"
    )
    async with smtp_server(handler) as port:
        with pytest.raises(DeliveryError, match=re.escape("<gone@example.com>: 550")) as failure:
            await smarthost(port).deliver(envelope, MAIL)
    assert failure.value.permanent is True
    assert handler.received[0].rcpt_tos == ["ann@example.com"]


async def test_a_greylisted_recipient_makes_the_failure_temporary() -> None:
    handler = Handler(refuse_rcpt={"ann@example.com": "450 4.2.0 greylisted"})
    async with smtp_server(handler) as port:
        with pytest.raises(DeliveryError) as failure:
            await smarthost(port).deliver(ENVELOPE, MAIL)
    assert failure.value.permanent is False


async def test_starttls_without_verification_reaches_a_self_signed_server(
    server_tls: ssl.SSLContext,
) -> None:
    handler = Handler()
    async with smtp_server(handler, tls_context=server_tls, require_starttls=True) as port:
        await smarthost(port, starttls=True, tls_verify=False).deliver(ENVELOPE, MAIL)
    assert handler.received[0].tls is True


async def test_starttls_refuses_an_unverified_certificate_temporarily(
    server_tls: ssl.SSLContext,
) -> None:
    handler = Handler()
    async with smtp_server(handler, tls_context=server_tls, require_starttls=True) as port:
        with pytest.raises(DeliveryError) as failure:
            await smarthost(port, starttls=True).deliver(ENVELOPE, MAIL)
    assert failure.value.permanent is False
    assert handler.received == []


async def test_corpus_mails_reach_the_smarthost_unchanged(corpora: Path) -> None:
    mails = sorted((corpora / "flanker").rglob("*.eml"))
    assert mails, "no .eml files under corpora/flanker"
    handler = Handler()
    async with smtp_server(handler, data_size_limit=None) as port:
        transport = smarthost(port)
        for number, path in enumerate(mails):
            envelope = Envelope(mail_from="s@x.org", rcpt_to=("r@y.org",), message_id=f"{number}")
            await transport.deliver(envelope, path.read_bytes())
    for path, received in zip(mails, handler.received, strict=True):
        raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        expected = raw.replace(b"\n", b"\r\n")
        assert received.content == expected.removesuffix(b"\r\n") + b"\r\n", path.name


# --- direct MX delivery -------------------------------------------------------------------


def fixed_mx(records: dict[str, list[tuple[int, str]]]) -> Any:
    async def resolve(domain: str) -> list[tuple[int, str]]:
        return records[domain]

    return resolve


async def test_mx_falls_back_to_the_next_host_when_the_first_refuses() -> None:
    handler = Handler()
    async with smtp_server(handler) as port:
        # 127.0.0.2 is loopback too, but nothing listens there on this port.
        resolver = fixed_mx({"example.com": [(20, "127.0.0.1."), (10, "127.0.0.2.")]})
        await MxTransport(resolve_mx=resolver, port=port, timeout=5.0).deliver(ENVELOPE, MAIL)
    assert [r.content for r in handler.received] == [MAIL]


async def test_mx_uses_starttls_when_offered_without_checking_the_certificate(
    server_tls: ssl.SSLContext,
) -> None:
    handler = Handler()
    async with smtp_server(handler, tls_context=server_tls, require_starttls=True) as port:
        resolver = fixed_mx({"example.com": [(10, "127.0.0.1")]})
        await MxTransport(resolve_mx=resolver, port=port, timeout=5.0).deliver(ENVELOPE, MAIL)
    assert handler.received[0].tls is True


async def test_mx_does_not_try_the_next_host_after_a_5xx() -> None:
    refusing, accepting = Handler(data_reply="554 5.7.1 no thanks"), Handler()
    async with (
        smtp_server(refusing) as port,
        smtp_server(accepting, host="127.0.0.2", port=port),
    ):
        resolver = fixed_mx({"example.com": [(10, "127.0.0.1"), (20, "127.0.0.2")]})
        with pytest.raises(DeliveryError, match=re.escape("554 5.7.1 no thanks")) as failure:
            await MxTransport(resolve_mx=resolver, port=port, timeout=5.0).deliver(ENVELOPE, MAIL)
    assert failure.value.permanent is True
    assert accepting.received == []


async def test_mx_with_every_host_down_is_temporary(closed_port: int) -> None:
    resolver = fixed_mx({"example.com": [(10, "127.0.0.1"), (20, "127.0.0.2")]})
    with pytest.raises(DeliveryError, match=re.escape("no MX host of example.com")) as failure:
        await MxTransport(resolve_mx=resolver, port=closed_port).deliver(ENVELOPE, MAIL)
    assert failure.value.permanent is False


async def test_mx_null_mx_domain_fails_permanently_without_connecting(closed_port: int) -> None:
    resolver = fixed_mx({"example.com": [(0, ".")]})
    with pytest.raises(DeliveryError, match="null MX") as failure:
        await MxTransport(resolve_mx=resolver, port=closed_port).deliver(ENVELOPE, MAIL)
    assert failure.value.permanent is True


async def test_mx_delivers_each_domain_its_own_recipients() -> None:
    handler = Handler()
    envelope = Envelope(
        mail_from="s@example.org",
        rcpt_to=("ann@example.com", "bob@example.net", "cy@example.com"),
        message_id="m",
    )
    async with smtp_server(handler) as port:
        resolver = fixed_mx({"example.com": [(10, "127.0.0.1")], "example.net": [(5, "127.0.0.1")]})
        await MxTransport(resolve_mx=resolver, port=port, timeout=5.0).deliver(envelope, MAIL)
    assert sorted(r.rcpt_tos for r in handler.received) == [
        ["ann@example.com", "cy@example.com"],
        ["bob@example.net"],
    ]


async def test_one_domain_failing_does_not_stop_the_others(closed_port: int) -> None:
    handler = Handler()
    envelope = Envelope(
        mail_from="s@example.org", rcpt_to=("ann@nomail.example", "bob@example.net"), message_id="m"
    )
    async with smtp_server(handler) as port:
        resolver = fixed_mx({"nomail.example": [(0, ".")], "example.net": [(10, "127.0.0.1")]})
        with pytest.raises(DeliveryError, match=re.escape("nomail.example")) as failure:
            await MxTransport(resolve_mx=resolver, port=port, timeout=5.0).deliver(envelope, MAIL)
    assert failure.value.permanent is True
    assert [r.rcpt_tos for r in handler.received] == [["bob@example.net"]]


# --- MX lookup through dnspython, against a stub DNS server on loopback -------------------


class StubDns(asyncio.DatagramProtocol):
    """Answers queries from a fixed table; names in `nxdomain` do not exist, `servfail` fail."""

    def __init__(self, records: dict[tuple[str, str], list[str]], nxdomain: set[str]) -> None:
        self.records = records
        self.nxdomain = nxdomain
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        if name in self.nxdomain:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif name.startswith("servfail."):
            response.set_rcode(dns.rcode.SERVFAIL)
        elif rdatas := self.records.get((name, rdtype)):
            response.answer.append(
                dns.rrset.from_text_list(question.name, 60, "IN", rdtype, rdatas)
            )
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_resolver() -> AsyncIterator[DnsMxResolver]:
    records = {
        ("example.com.", "MX"): ["20 mx2.example.com.", "10 mx1.example.com."],
        ("nullmx.example.", "MX"): ["0 ."],
        ("bare.example.", "A"): ["192.0.2.7"],
    }
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: StubDns(records, nxdomain={"gone.example."}), local_addr=("127.0.0.1", 0)
    )
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = transport.get_extra_info("sockname")[1]
    resolver.lifetime = 5.0
    resolver.retry_servfail = False
    yield DnsMxResolver(resolver)
    transport.close()


async def test_dns_lookup_returns_the_mx_records(dns_resolver: DnsMxResolver) -> None:
    assert sorted(await dns_resolver("example.com")) == [
        (10, "mx1.example.com."),
        (20, "mx2.example.com."),
    ]


async def test_dns_lookup_of_a_domain_with_only_an_a_record_is_implicit_mx(
    dns_resolver: DnsMxResolver,
) -> None:
    assert await dns_resolver("bare.example") == []


async def test_dns_lookup_of_a_domain_without_any_address_is_permanent(
    dns_resolver: DnsMxResolver,
) -> None:
    with pytest.raises(DeliveryError, match="no MX, A or AAAA") as failure:
        await dns_resolver("empty.example")
    assert failure.value.permanent is True


async def test_dns_lookup_of_a_missing_domain_is_permanent(dns_resolver: DnsMxResolver) -> None:
    with pytest.raises(DeliveryError, match="NXDOMAIN") as failure:
        await dns_resolver("gone.example")
    assert failure.value.permanent is True


async def test_dns_server_failure_is_temporary(dns_resolver: DnsMxResolver) -> None:
    with pytest.raises(DeliveryError) as failure:
        await dns_resolver("servfail.example")
    assert failure.value.permanent is False


async def test_null_mx_in_dns_fails_delivery_permanently(dns_resolver: DnsMxResolver) -> None:
    with pytest.raises(DeliveryError, match="null MX") as failure:
        await MxTransport(resolve_mx=dns_resolver).deliver(
            Envelope(mail_from="", rcpt_to=("x@nullmx.example",), message_id="m"), MAIL
        )
    assert failure.value.permanent is True
