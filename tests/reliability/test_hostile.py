"""Hostile mail through the real daemon over SMTP: it never dies and never loses what it took.

Hypothesis builds malformed MIME, absurd headers, deep nesting, huge lines, unknown and lying
charsets, NUL bytes and nested enclosed messages; every file of the corpora goes the same way.
Each mail must be stored as one ticket entry with its raw bytes kept, or refused at SMTP with
a clear code. `SUPPORTD_HOSTILE_EXAMPLES` sets how many generated mails (500 by default).
"""

from __future__ import annotations

import os
import re
import smtplib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import Daemon, free_port, wait_for

EXAMPLES = int(os.environ.get("SUPPORTD_HOSTILE_EXAMPLES", "500"))
MAX_SIZE = 1_000_000

charsets = st.sampled_from([
    "utf-8", "us-ascii", "iso-8859-1", "x-unknown-42", "utf-7", "iso-2022-jp", "gb18030",
    "utf-16", "", "\"\"", "utf-8\x00", "a" * 300, "windows-1252", "koi8-r",
])
junk = st.binary(max_size=300)
header_names = st.one_of(
    st.sampled_from(["Subject", "From", "To", "Cc", "Message-ID", "In-Reply-To", "References",
                     "Content-Type", "Content-Transfer-Encoding", "Date", "Reply-To",
                     "Auto-Submitted", "Content-Disposition"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"),
            min_size=1, max_size=80),
)


@st.composite
def header_values(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["junk", "encoded", "long", "folded", "addresses", "nul"]))
    if kind == "junk":
        return draw(junk).replace(b"\r", b"").replace(b"\n", b"")
    if kind == "encoded":
        charset = draw(charsets)
        encoding = draw(st.sampled_from(["B", "Q", "X"]))
        return f"=?{charset}?{encoding}?".encode() + draw(junk).replace(b"\n", b"") + b"?="
    if kind == "long":  # an absurd header, folded so that each line stays within 998
        return b"\r\n ".join([b"x" * 900] * draw(st.integers(1, 100)))
    if kind == "folded":
        return b"\r\n ".join([b"part"] * draw(st.integers(1, 2000)))
    if kind == "addresses":
        return b", ".join(draw(st.lists(st.sampled_from(
            [b"<>", b"@", b"a@", b"\"q\\\"x\"@y", b"<<a@b>>", b"x@y (comment", b"=?x?B?@?="]),
            max_size=50)))
    return b"a\x00b\x00" + draw(junk).replace(b"\n", b"")


@st.composite
def bodies(draw: st.DrawFn, depth: int = 0) -> bytes:
    kind = draw(st.sampled_from(
        ["text", "multipart", "broken_boundary", "nested_message", "base64", "huge_line"]
        if depth < 3 else ["text", "base64"]))
    charset = draw(charsets)
    if kind == "text":
        return (f"Content-Type: text/{draw(st.sampled_from(['plain', 'html', 'x-?']))}; "
                f"charset=\"{charset}\"\r\n\r\n").encode() + draw(junk)
    if kind == "base64":
        return (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64"
                b"\r\n\r\n" + draw(st.binary(max_size=200)) + b"==\r\n!!!")
    if kind == "huge_line":
        return b"Content-Type: text/plain\r\n\r\n" + b"y" * draw(st.integers(999, 200_000))
    if kind == "nested_message":
        return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + draw(bodies(depth + 1))
    boundary = b"b" + str(depth).encode()
    parts = draw(st.lists(bodies(depth + 1), min_size=0, max_size=3))
    closing = b"--" + boundary + b"--\r\n" if kind == "multipart" else b""
    return (b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n"
            + b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + closing)


def deep_nesting(levels: int, *, enclosed: bool) -> bytes:
    """A zip-bomb-like tower: `levels` multiparts (or enclosed messages) inside each other."""
    if enclosed:
        return b"Content-Type: message/rfc822\r\n\r\n" * levels + b"\r\nbottom\r\n"
    opening = b"".join(b"Content-Type: multipart/mixed; boundary=\"l%d\"\r\n\r\n--l%d\r\n" % (i, i)
                       for i in range(levels))
    return opening + b"Content-Type: text/plain\r\n\r\nbottom\r\n" + b"".join(
        b"\r\n--l%d--\r\n" % i for i in reversed(range(levels)))


@st.composite
def hostile_mails(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(header_names, header_values()), max_size=12))
    head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    if draw(st.booleans()):
        head += b"X-No-Colon-Here\r\n"
    if draw(st.integers(0, 9)) == 0:
        body = deep_nesting(draw(st.integers(50, 3000)), enclosed=draw(st.booleans()))
    else:
        body = draw(bodies())
    raw = b"From: <hostile@customer.example>\r\n" + head + body
    # Mostly CRLF as on the wire (RFC 5321 §2.3.8); bare LF or CR from broken clients.
    ending = draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r"]))
    return raw.replace(b"\r\n", ending) if ending != b"\r\n" else raw


class Outcomes:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.accepted: list[bytes] = []
        self.duplicates = 0  # a Message-ID already stored: one entry, the first mail's bytes
        self.refused: Counter[str] = Counter()

    def push(self, raw: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.daemon.port, timeout=30) as client:
            client.ehlo()
            assert client.mail("hostile@customer.example")[0] == 250
            assert client.rcpt("support@example.com")[0] == 250
            try:
                code, reply = client.data(raw)
            except smtplib.SMTPDataError as refused:
                error = refused.smtp_error
                code, reply = refused.smtp_code, (
                    error if isinstance(error, bytes) else error.encode())
        if code != 250:
            assert 500 <= code < 600, (code, reply)  # a clear, permanent refusal
            self.refused[f"{code} {reply.decode()[:60]}"] += 1
        elif b"duplicate of" in reply:
            self.duplicates += 1
        else:
            self.accepted.append(raw)

    def check(self, what: str) -> None:
        """Every accepted mail is one ticket entry with its bytes kept; the daemon still runs."""
        assert self.daemon.process is not None and self.daemon.process.poll() is None, \
            self.daemon.log()[-3000:]
        wait_for(self.daemon.inbox_settled, timeout=120, what="hostile mail processed")
        rows = self.daemon.query(
            "SELECT i.raw, i.state, i.error, count(m.id) AS entries FROM inbox i "
            "LEFT JOIN messages m ON m.inbox_id = i.id GROUP BY i.id")
        failed = [r["error"] for r in rows if r["state"] != "done"]
        assert not failed, failed[:5]
        assert all(r["entries"] == 1 for r in rows)
        kept = {_wire(r["raw"]) for r in rows}
        missing = [raw[:80] for raw in self.accepted if _wire(raw) not in kept]
        assert not missing, missing[:3]
        tried = len(self.accepted) + self.duplicates + sum(self.refused.values())
        print(f"\nhostile {what}: {tried} tried, {len(self.accepted)} stored (each one ticket "
              f"entry, raw bytes kept, none failed), {self.duplicates} recognised as duplicates "
              f"by Message-ID, refused: {dict(self.refused) or 'none'}")


def _wire(raw: bytes) -> bytes:
    """Bytes as they cross SMTP: smtplib ends the data with CRLF and aiosmtpd keeps it."""
    return raw.rstrip(b"\r\n")


@pytest.fixture(scope="module")
def hostile_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("hostile"), free_port(), max_size=MAX_SIZE)
    d.start()
    yield d
    d.stop()


def test_generated_hostile_mail_is_stored_or_refused_and_never_stops_the_daemon(
    hostile_daemon: Daemon,
) -> None:
    outcomes = Outcomes(hostile_daemon)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example,
                                     HealthCheck.data_too_large])
    @given(hostile_mails())
    def push(raw: bytes) -> None:
        outcomes.push(raw)

    push()
    outcomes.check("generated mail")


def test_every_corpus_mail_is_stored_or_refused(hostile_daemon: Daemon, corpora: Path) -> None:
    outcomes = Outcomes(hostile_daemon)
    skip = {".json", ".md", ".py", ".txt"}
    files = [p for p in sorted(corpora.rglob("*")) if p.is_file() and p.suffix not in skip]
    for path in files:
        # As an MTA sends it: CRLF line ends (RFC 5321 §2.3.8), the bytes otherwise as stored.
        outcomes.push(re.sub(rb"\r?\n", b"\r\n", path.read_bytes()))
    outcomes.check(f"corpus files ({len(files)})")
