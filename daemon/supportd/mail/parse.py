"""Parse: raw RFC 5322 bytes into a `ParsedMail` value (the first step of processing).

Built on the stdlib `email` package with `compat32` plus our own header decoding.
Measured on the 363 corpus mails (flanker + sisimai, 7.1 MB, best of 3): reading and
decoding every header took 0.53 s with `policy.default` and 0.10 s with `compat32` + own
decoding; a full read (bodies, attachments, addresses) 2.0 s against 0.25 s for
`parse_mail` (that read also walks into enclosed messages). `policy.default` turns raw
8-bit Latin-1 headers into U+FFFD where we recover the text, so `compat32` is both the
faster and the more correct choice here.

An enclosed `message/*` part (a forwarded mail, a bounce's original, a DSN report) is one
attachment: its parts belong to that message, not to this one's body.

The work per mail is bounded, whatever the bytes (finding 6 of the hardening review: one
mail of 3.3 MB took 78 s). The stdlib parser recurses once per nesting level (RecursionError
near 1000, quadratic time well before), so multiparts nested deeper than `_MAX_DEPTH` are kept
as one opaque attachment, as enclosed messages are; the walk stops after `_MAX_PARTS` parts.
A header is cut at `MAX_HEADER_CHARS` as it is read (Content-Type and Content-Disposition at
`MAX_PARAMETER_HEADER_CHARS`: the stdlib splits their parameters in quadratic time); an HTML
body is converted to text up to `MAX_HTML_CHARS`; encoded words are decoded here in linear
time (the stdlib's `decode_header` is quadratic in their number); and parsing stops at the
first step after `budget` seconds. Each limit that bites leaves a note in `defects` and in
`cut`: a mail with a `cut` was not read whole, and only its raw bytes have all of it.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import mimetypes
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import MessageDefect
from email.feedparser import BytesFeedParser
from email.headerregistry import Address as HeaderAddress
from email.message import Message
from email.policy import Compat32
from email.quoprimime import header_decode
from email.utils import getaddresses, parsedate_to_datetime
from typing import TypeAlias, cast

import inscriptis

from supportd.mail.headers import one_line as _one_line


@dataclass(frozen=True)
class Address:
    """A mailbox: `email` is lower-cased for comparison, `name` is the decoded display name."""

    email: str
    name: str = ""


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ParsedMail:
    message_id: str | None  # without angle brackets
    in_reply_to: tuple[str, ...]  # message ids, without angle brackets
    references: tuple[str, ...]  # message ids, without angle brackets, oldest first
    subject: str  # decoded, folded onto one line, never containing CR or LF
    from_addr: Address | None
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    date: datetime | None  # timezone-aware
    headers: tuple[tuple[str, str], ...]  # (lower-cased name, decoded one-line value), in order
    text: str  # text/plain body preferred, else the HTML body as text; "" when none
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]  # human-readable notes on what was broken and how it was read
    size: int  # length of the raw bytes
    # What a limit (size, time) or a parser failure left unread, one note each, also in
    # `defects`. Not empty: the fields above are partial, only the raw mail is whole; keep
    # it and have an agent look.
    cut: tuple[str, ...] = ()

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def header_all(self, name: str) -> tuple[str, ...]:
        wanted = name.lower()
        return tuple(value for key, value in self.headers if key == wanted)


_MAX_DEPTH = 20  # real mail nests 2-6 levels; Postfix refuses beyond 100
_MAX_PARTS = 1000
# One header; the longest real one we know, a folded Subject of encoded words, is 205 KiB.
MAX_HEADER_CHARS = 256 * 1024
MAX_PARAMETER_HEADER_CHARS = 8 * 1024  # the stdlib takes 3 ms for this, 0.8 s for 400 KB
_PARAMETER_HEADERS = frozenset({"content-type", "content-disposition"})
MAX_HTML_CHARS = 512 * 1024  # inscriptis: about 0.7 s for a table this long, 34 s for 23 MB
PARSE_BUDGET = 2.0  # seconds; a normal mail takes a millisecond
_FEED = 64 * 1024  # bytes given to the stdlib parser between looks at the clock
# Python codecs that are no mail charset and decode in quadratic time (punycode: 33 s for
# 400 KB); declared by a mail, they are unknown charsets.
_NOT_CHARSETS = frozenset({"punycode", "idna"})

_MSG_ID_IN_BRACKETS = re.compile(r"<([^<>]*)>")
# RFC 2047 §2: encoded-text holds no "?", so each try to match stops at the next "?": linear.
_ENCODED_WORD = re.compile(r"=\?([^?]*)\?([bBqQ])\?([^?]*)\?=")
_WHITESPACE = re.compile(r"\s+")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HTML_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEADER_END = re.compile(rb"\r?\n\r?\n|\r\r")
_MESSAGE_ID_LINE = re.compile(r"(?im)^message-id[ \t]*:(.*)$")
_CONTENT_HEADER_LINE = re.compile(r"(?im)^(?:from|date|subject)[ \t]*:.*$")
_TOKEN = r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]+"  # RFC 2045 §5.1: no space, CTLs or tspecials
_MIME_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
_SURROGATE_ESCAPES = re.compile("[\udc80-\udcff]")  # raw 8-bit bytes, as the parser keeps them
_UNLABELLED_CHARSETS = frozenset({"us-ascii", "ascii", "us_ascii", "ansi_x3.4-1968"})


_Child: TypeAlias = "Message[str, str] | str"  # what the stdlib types a part's children as


class _CutHeader(str):
    """A header value cut at its limit as the parser read it; `length` is what it had."""

    length: int


class _RawHeaders(Compat32):
    """compat32 that hands header values over as read, cut at their limit; this module
    decodes them itself."""

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        limit = (MAX_PARAMETER_HEADER_CHARS if name.strip().lower() in _PARAMETER_HEADERS
                 else MAX_HEADER_CHARS)
        if len(value) <= limit:
            return name, value
        cut = _CutHeader(value[:limit])
        cut.length = len(value)
        return name, cut

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


class _MimePart(Message):
    """A MIME part that tells the stdlib parser where to stop descending."""

    depth = 0

    def attach(self, payload: _Child) -> None:
        # The parser attaches each child before reading its headers, so depth is known in time.
        if isinstance(payload, _MimePart):
            payload.depth = self.depth + 1
        super().attach(payload)

    def declared_type(self) -> str:
        return super().get_content_type()

    def is_too_deep(self) -> bool:
        return self.depth >= _MAX_DEPTH and self.declared_type().startswith("multipart/")

    def get_content_type(self) -> str:
        # The parser splits only what this returns as multipart/* or message/*.
        declared = self.declared_type()
        if declared.startswith("message/") or self.is_too_deep():
            return "application/octet-stream"
        return declared


_POLICY = _RawHeaders()


class _Reading:
    """What one parse noticed so far, and until when it may go on."""

    def __init__(self, budget: float, clock: Callable[[], float]) -> None:
        self.defects: list[str] = []
        self.cut: list[str] = []
        self.budget, self.clock = budget, clock
        self.deadline = clock() + budget
        self.spent = False

    def limit(self, note: str) -> None:
        """A limit bit: `note` says what was left unread and why."""
        self.defects.append(note)
        self.cut.append(note)

    def out_of_time(self, step: str) -> bool:
        """Whether the budget is spent; the first time, the note names `step`, not read."""
        if not self.spent and self.clock() >= self.deadline:
            self.spent = True
            self.limit(f"parsing ran out of its budget of {self.budget:g} s; {step} and what "
                       "follows were not read")
        return self.spent


def parse_mail(raw: bytes, *, budget: float = PARSE_BUDGET,
               clock: Callable[[], float] = time.monotonic) -> ParsedMail:
    """Parse `raw`; never raises, whatever the bytes. Past `budget` seconds (on `clock`)
    the rest is left unread and said so in `cut`."""
    reading = _Reading(budget, clock)
    try:
        return _parse(raw, reading)
    except Exception as exc:  # the stdlib email package is not total over arbitrary bytes
        reading.limit(f"parser failed ({type(exc).__name__}: {exc}); mail kept unparsed")
        return _unparsed(raw, reading)


def dedupe_key(raw: bytes) -> str:
    """Inbox deduplication key: "mid:<Message-ID> <digest>" when there is a Message-ID, else
    "sha256:<digest of it all>".

    The digest covers From, Date, Subject and the body, which stay the same when one mail
    comes twice (an MTA's retry, the same mail by SMTP and by IMAP, with other Received
    lines), so only the same mail is a duplicate: a stranger who sends a customer's
    Message-ID first, or a device that always says <1@localhost>, does not make a
    different mail disappear as "duplicate".
    """
    end = _HEADER_END.search(raw)
    head = _normalise_line_endings(raw[: end.start()] if end else raw)
    unfolded = _FOLD.sub("", _decode_unlabelled(head))
    found = _MESSAGE_ID_LINE.search(unfolded)
    message_id = _first_message_id(found.group(1)) if found else None
    if not message_id:
        return "sha256:" + hashlib.sha256(_normalise_line_endings(raw)).hexdigest()
    digest = hashlib.sha256()
    for line in _CONTENT_HEADER_LINE.findall(unfolded):
        digest.update(" ".join(line.split()).lower().encode("utf-8", "surrogateescape") + b"\n")
    digest.update(_normalise_line_endings(raw[end.end():] if end else b"").rstrip(b"\n"))
    return f"mid:{message_id} {digest.hexdigest()[:32]}"


def _parse(raw: bytes, reading: _Reading) -> ParsedMail:
    root = _mime_tree(_normalise_line_endings(raw), reading)
    _note_cut_headers(root, reading)
    defects = reading.defects
    # What processing needs comes first and is read even past the budget: the limit on
    # each header bounds it.
    from_addrs = _addresses(root, "from", defects)
    message_id = _first_message_id(root.get("message-id", ""))
    in_reply_to = _message_ids(root.get_all("in-reply-to", []))
    references = _message_ids(root.get_all("references", []))
    subject = _decode_header_value(root.get("subject", ""), defects)
    reply_to = _addresses(root, "reply-to", defects)
    to = _addresses(root, "to", defects)
    cc = _addresses(root, "cc", defects)
    date = _date(root.get("date"), defects)
    headers = _headers(root, reading)
    text, attachments = _read_body(root, reading)
    return ParsedMail(
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        subject=subject,
        from_addr=from_addrs[0] if from_addrs else None,
        reply_to=reply_to,
        to=to,
        cc=cc,
        date=date,
        headers=headers,
        text=text,
        attachments=attachments,
        defects=tuple(dict.fromkeys(defects)),
        size=len(raw),
        cut=tuple(dict.fromkeys(reading.cut)),
    )


def _mime_tree(data: bytes, reading: _Reading) -> _MimePart:
    """The stdlib's parse of `data`, fed in pieces: past the budget, of what was fed."""
    parser = BytesFeedParser(_MimePart, policy=_POLICY)
    for start in range(0, len(data), _FEED):
        if start and reading.out_of_time(f"the mail from byte {start} on"):
            break
        parser.feed(data[start:start + _FEED])
    root = parser.close()
    assert isinstance(root, _MimePart)
    return root


def _headers(root: _MimePart, reading: _Reading) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for name, value in root.items():
        if reading.out_of_time(f"the headers from {_one_line(_from_8bit(name))[:80]} on"):
            break
        headers.append(
            (_one_line(_from_8bit(name)).lower(), _decode_header_value(value, reading.defects)))
    return tuple(headers)


def _note_cut_headers(part: _MimePart, reading: _Reading) -> None:
    for name, value in part.items():
        if isinstance(value, _CutHeader):
            reading.limit(f"header {_one_line(_from_8bit(name))[:80]}: {value.length} "
                          f"characters, read up to {len(value)}")


def _unparsed(raw: bytes, reading: _Reading) -> ParsedMail:
    return ParsedMail(
        message_id=None,
        in_reply_to=(),
        references=(),
        subject="",
        from_addr=None,
        reply_to=(),
        to=(),
        cc=(),
        date=None,
        headers=(),
        text="",
        attachments=(),
        defects=tuple(reading.defects),
        size=len(raw),
        cut=tuple(reading.cut),
    )


def _normalise_line_endings(data: bytes) -> bytes:
    # CRLF (RFC 5322 §2.1), bare LF and CR-only mail must parse the same.
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


# --- headers ---------------------------------------------------------------------------


def _from_8bit(value: str) -> str:
    """Recover raw 8-bit text the bytes parser smuggled through as surrogate escapes."""
    if value.isascii() or not _SURROGATE_ESCAPES.search(value):
        return value
    return _decode_unlabelled(value.encode("utf-8", "surrogateescape"))


def _decode_unlabelled(data: bytes) -> str:
    """Decode bytes of no declared charset: UTF-8 (RFC 6532) unless it is clearly Latin."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    as_utf8 = data.decode("utf-8", "replace")
    broken = as_utf8.count("\ufffd")
    decoded = sum(1 for char in as_utf8 if char > "\x7f") - broken
    # Latin-1 text almost never forms valid UTF-8 sequences; a truncated UTF-8 tail does.
    return as_utf8 if decoded > broken else data.decode("cp1252", "replace")


def _unfold(value: str) -> str:
    # RFC 5322 §2.2.3: unfolding removes the CRLF before folding whitespace.
    return _FOLD.sub("", value)


def _decode_header_value(value: str, defects: list[str]) -> str:
    return _one_line(_decode_encoded_words(_unfold(_from_8bit(value)), defects))


def _decode_encoded_words(value: str, defects: list[str]) -> str:
    """RFC 2047 encoded-words to text, in time linear in the length of `value`; an
    undecodable word is kept as written."""
    if "=?" not in value:
        return value
    out: list[str] = []
    run: list[bytes] = []  # adjacent words of one charset, decoded together: a character
    run_charset = ""  # may span two of them
    end = 0
    after_word = False

    def end_run() -> None:
        if run:
            out.append(_decode_charset(b"".join(run), run_charset, "header", defects))
            run.clear()

    for word in _ENCODED_WORD.finditer(value):
        between = value[end:word.start()]
        charset = word.group(1).lower().partition("*")[0]  # RFC 2231 §5: utf-8*en
        data = _encoded_word_bytes(word.group(2), word.group(3))
        # RFC 2047 §6.2: space between two adjacent encoded-words is not part of the text.
        adjacent = after_word and not between.strip(" \t")
        if data is None:
            defects.append(f"undecodable encoded-word kept as written: {word.group()[:80]!r}")
            end_run()
            out.append(between + word.group())
        elif adjacent and charset == run_charset:
            run.append(data)
        else:
            end_run()
            if not adjacent:
                out.append(between)
            run.append(data)
            run_charset = charset
        after_word = data is not None
        end = word.end()
    end_run()
    out.append(value[end:])
    return "".join(out)


def _encoded_word_bytes(encoding: str, text: str) -> bytes | None:
    """What an encoded-text stands for (RFC 2047 §4), read as the stdlib reads it; None when
    it is no base64."""
    if encoding in "qQ":
        return header_decode(text).encode("raw-unicode-escape")
    if len(text) % 4:
        text += "==="[: 4 - len(text) % 4]  # Postel: padding is often left out
    try:
        return binascii.a2b_base64(text)
    except ValueError:  # binascii.Error, or a character beyond ASCII
        return None


def _decode_charset(data: bytes, charset: str, where: str, defects: list[str]) -> str:
    """Decode with the declared charset; unknown or unusable charsets fall back to UTF-8."""
    try:
        if codecs.lookup(charset).name not in _NOT_CHARSETS:
            # LookupError also for codecs that are not charsets (base64)
            return data.decode(charset)
    except LookupError:
        pass
    except ValueError:  # UnicodeError, or a charset name Python cannot look up
        try:
            text = data.decode(charset, "replace")
            defects.append(f"{where}: bytes invalid in declared charset {charset!r} were replaced")
            return text
        except (LookupError, ValueError):
            pass
    defects.append(f"{where}: unknown charset {charset!r}, read as utf-8")
    return data.decode("utf-8", "replace")


def _message_ids(values: list[str]) -> tuple[str, ...]:
    ids: list[str] = []
    for value in values:
        ids.extend(_extract_message_ids(value))
    return tuple(dict.fromkeys(ids))


def _first_message_id(value: str) -> str | None:
    return next(iter(_extract_message_ids(value)), None)


def _extract_message_ids(value: str) -> list[str]:
    """The `<...>` tokens of a msg-id list (RFC 5322 §3.6.4); surrounding garbage is ignored."""
    text = _one_line(_from_8bit(_unfold(value)))
    bracketed = [_WHITESPACE.sub("", token) for token in _MSG_ID_IN_BRACKETS.findall(text)]
    if any(bracketed):
        return [token for token in bracketed if token]
    # Some mailers omit the brackets; a bare word with an "@" is still clearly an id.
    words = (word.strip("<>") for word in re.split(r"[\s,;]+", text))
    return [word for word in words if "@" in word and "<" not in word and ">" not in word]


def _addresses(root: _MimePart, name: str, defects: list[str]) -> tuple[Address, ...]:
    values = [_one_line(_unfold(_from_8bit(value))) for value in root.get_all(name, [])]
    found: list[Address] = []
    for display, email in getaddresses(values):
        if not display and not email:
            continue  # an empty group, e.g. "undisclosed-recipients:;"
        if not is_mailbox(email):
            defects.append(f"{name}: skipped invalid address {display or email!r}")
            continue
        found.append(Address(email.lower(), _one_line(_decode_encoded_words(display, defects))))
    return tuple(found)


_DOMAIN = re.compile(r"(?:[^\W_](?:[\w-]*[^\W_])?\.)*[^\W_](?:[\w-]*[^\W_])?|\[[^\[\]\s]+\]")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")  # RFC 5322 §3.2.3, ASCII
_HOST_NAME = re.compile(r"[A-Za-z0-9.-]+")  # ASCII and no domain literal: _DOMAIN did the rest


def is_mailbox(email: str) -> bool:
    """An address we could write back to: RFC 5321 §4.1.2 shape, and one that the stdlib's
    header parser (which composes our replies) reads without failing."""
    local, at, domain = email.rpartition("@")
    if not (at and local and _DOMAIN.fullmatch(domain)):
        return False
    if _DOT_ATOM.fullmatch(local) and "=?" not in local and _HOST_NAME.fullmatch(domain):
        return True  # the common case, which that parser reads back unchanged (and slowly)
    if any(c.isspace() or c in "<>" or not c.isprintable() for c in email):
        return False
    try:
        return HeaderAddress(addr_spec=email).addr_spec == email
    except (ValueError, IndexError, TypeError):  # IndexError: cpython's parser on "=?x?b?"
        return False


def _date(value: str | None, defects: list[str]) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(_one_line(_from_8bit(value)))
    except (TypeError, ValueError, OverflowError, IndexError):
        defects.append(f"unreadable Date header {value[:80]!r}")
        return None
    # RFC 5322 §3.3: "-0000" means UTC with no local zone known; Python returns it naive.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- body and attachments --------------------------------------------------------------


@dataclass(frozen=True)
class _Leaf:
    part: _MimePart
    content_type: str
    is_attachment: bool


def _read_body(root: _MimePart, reading: _Reading) -> tuple[str, tuple[Attachment, ...]]:
    """The text, then the attachments: the text matters more when time runs out."""
    leaves = list(_leaves(root, reading))
    text = _body_text([leaf for leaf in leaves if not leaf.is_attachment], reading)
    attachments: list[Attachment] = []
    for leaf in leaves:
        if leaf.is_attachment:
            if reading.out_of_time(f"attachment {len(attachments) + 1}"):
                break
            attachments.append(_attachment(leaf, reading.defects))
    return text, tuple(attachments)


def _body_text(inline: list[_Leaf], reading: _Reading) -> str:
    for leaf in inline:
        if leaf.content_type == "text/plain":
            text = _part_text(leaf.part, reading.defects)
            if text.strip():
                return text
    for leaf in inline:
        if leaf.content_type == "text/html":
            if reading.out_of_time("the HTML body"):
                return ""
            return _html_to_text(_part_text(leaf.part, reading.defects), reading)
    return ""


def _leaves(root: _MimePart, reading: _Reading) -> Iterator[_Leaf]:
    """Leaf parts in document order, walked without recursion and at most `_MAX_PARTS`."""
    stack: list[_Child] = [root]
    seen = 0
    while stack:
        part = stack.pop()
        if not isinstance(part, _MimePart):
            continue  # the parser only ever attaches _MimePart objects
        seen += 1
        if seen > _MAX_PARTS:
            reading.limit(f"more than {_MAX_PARTS} MIME parts; the rest were not read")
            return
        if reading.out_of_time(f"MIME part {seen}"):
            return
        if part is not root:
            _note_cut_headers(part, reading)
        reading.defects.extend(_defect_note(defect) for defect in part.defects)
        if part.is_multipart():
            stack.extend(reversed(cast(list[_Child], part.get_payload())))  # a list once multipart
        else:
            yield _leaf(part, reading)


def _leaf(part: _MimePart, reading: _Reading) -> _Leaf:
    defects = reading.defects
    declared = part.declared_type()
    if part.is_too_deep():
        reading.limit(f"MIME nested deeper than {_MAX_DEPTH} levels; kept as one attachment")
        return _Leaf(part, declared, is_attachment=True)
    if declared.startswith("multipart/"):
        # RFC 2046 §5.1.1 needs the boundary; without it the body is plain text.
        defects.append(f"{declared} without a usable boundary read as text/plain")
        declared = "text/plain"
    # RFC 2045 §5.2: a Content-Type that is not type/subtype in tokens is text/plain.
    content_type = declared if _has_valid_content_type(part) else _guessed_type(part, "text/plain")
    is_attachment = (
        bool(_filename(part, defects))
        or part.get_content_disposition() == "attachment"
        or not content_type.startswith("text/")
    )
    return _Leaf(part, content_type, is_attachment)


def _has_valid_content_type(part: _MimePart) -> bool:
    value = part.get("content-type")
    return value is None or _MIME_TYPE.fullmatch(value.split(";", 1)[0].strip()) is not None


def _guessed_type(part: _MimePart, default: str) -> str:
    # A broken Content-Type of a named part says less than the name's extension does.
    guessed, _ = mimetypes.guess_type(_filename(part, []) or "", strict=False)
    return guessed or default


def _filename(part: _MimePart, defects: list[str]) -> str:
    try:
        name = part.get_filename()  # RFC 2231 parameters, then the Content-Type name
    except (ValueError, LookupError, UnicodeError, TypeError):
        defects.append("unreadable attachment filename")
        return ""
    return _decode_header_value(name, defects) if name else ""


def _attachment(leaf: _Leaf, defects: list[str]) -> Attachment:
    data = _payload_bytes(leaf.part, defects)
    return Attachment(
        filename=_filename(leaf.part, defects),
        content_type=leaf.content_type,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _payload_bytes(part: _MimePart, defects: list[str]) -> bytes:
    try:
        data = part.get_payload(decode=True)  # undoes base64, quoted-printable, x-uuencode
    except (ValueError, TypeError, UnicodeError) as exc:
        defects.append(f"undecodable transfer encoding ({exc}); part read as empty")
        data = b""
    defects.extend(_defect_note(defect) for defect in part.defects)
    return data if isinstance(data, bytes) else b""


def _part_text(part: _MimePart, defects: list[str]) -> str:
    data = _payload_bytes(part, defects)
    charset = part.get_content_charset()
    if charset is None or charset in _UNLABELLED_CHARSETS:
        text = _decode_unlabelled(data)  # RFC 2045 §5.2 says us-ascii; 8-bit mail disagrees
    else:
        text = _decode_charset(data, charset, "body", defects)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _html_to_text(html: str, reading: _Reading) -> str:
    if len(html) > MAX_HTML_CHARS:
        reading.limit(f"HTML body: {len(html)} characters, converted to text up to "
                      f"{MAX_HTML_CHARS}")
        html = html[:MAX_HTML_CHARS]
    try:
        text: str = inscriptis.get_text(_HTML_CONTROLS.sub("", html))
    except Exception as exc:  # lxml raises assorted errors on hostile markup
        reading.defects.append(
            f"HTML body could not be converted to text ({type(exc).__name__})")
        return ""
    return text


def _defect_note(defect: MessageDefect) -> str:
    summary = (type(defect).__doc__ or type(defect).__name__).strip().splitlines()[0]
    return f"{summary} {defect}".strip() if str(defect) else summary
