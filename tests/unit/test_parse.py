"""parse_mail and dedupe_key: real-world corpora, targeted breakage, and generated garbage."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supportd.mail.parse import (
    MAX_HEADER_CHARS,
    MAX_HTML_CHARS,
    MAX_PARAMETER_HEADER_CHARS,
    ParsedMail,
    dedupe_key,
    is_mailbox,
    parse_mail,
)

# --- helpers ---------------------------------------------------------------------------


def _mail(*header_lines: str, body: str | bytes = "body\n") -> bytes:
    head = "".join(line + "\n" for line in header_lines).encode()
    return head + b"\n" + (body if isinstance(body, bytes) else body.encode())


def _assert_consistent(parsed: ParsedMail, raw: bytes) -> None:
    """What every ParsedMail promises, whatever the input was."""
    assert parsed.size == len(raw)
    assert not any(note.startswith("parser failed") for note in parsed.defects), parsed.defects
    for value in (parsed.subject, *(value for _, value in parsed.headers)):
        assert "\r" not in value and "\n" not in value
        assert not any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)
    assert "\r" not in parsed.text
    for message_id in (parsed.message_id or "", *parsed.in_reply_to, *parsed.references):
        assert not any(char in message_id for char in "<> \t\r\n")
    assert len(parsed.references) == len(set(parsed.references))
    for address in (parsed.from_addr, *parsed.reply_to, *parsed.to, *parsed.cc):
        if address is not None:
            assert address.email == address.email.lower() and "@" in address.email
            assert "\n" not in address.name and "\r" not in address.name
    assert parsed.date is None or parsed.date.tzinfo is not None
    for attachment in parsed.attachments:
        assert attachment.size >= 0 and len(attachment.sha256) == 64
        assert "\n" not in attachment.filename and "\r" not in attachment.filename
    for text in (parsed.subject, parsed.text, *(v for _, v in parsed.headers),
                 *(part for a in parsed.attachments for part in (a.filename, a.content_type))):
        text.encode("utf-8")  # what the store writes: raw 8-bit bytes never pass as surrogates


def test_a_content_type_of_raw_8bit_bytes_is_text_plain_as_rfc_2045_says() -> None:
    # Found by test_hostile: "/\xc9Dg" has one slash, passed for a type and reached the store
    # as surrogate escapes, which SQLite refuses: the mail was marked failed.
    raw = (b"From: <a@customer.example>\nContent-Type: /\xc9Dg\xf19\xad\n"
           b"Content-Type: application/octet-stream\n\nbody\n")
    parsed = parse_mail(raw)
    _assert_consistent(parsed, raw)
    assert "body" in parsed.text and not parsed.attachments


def _corpus_mails(corpora: Path) -> list[Path]:
    mails = sorted((corpora / "flanker").rglob("*.eml")) + sorted(
        (corpora / "sisimai").rglob("*.eml")
    )
    assert mails, f"no .eml files under {corpora}/flanker or {corpora}/sisimai"
    return mails


def _flanker(corpora: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    expectations = json.loads((corpora / "flanker" / "expectations.json").read_text())
    return corpora / "flanker" / "tests" / "fixtures", expectations["files"]


def _flanker_facts(corpora: Path, key: str) -> list[tuple[str, Any, ParsedMail]]:
    """(file, expected value, parsed mail) for every flanker fixture that states `key`."""
    root, files = _flanker(corpora)
    facts = [
        (name, fact[key], parse_mail((root / name).read_bytes()))
        for name, fact in files.items()
        if key in fact and (root / name).is_file()
    ]
    assert facts, f"no flanker expectation states {key!r}"
    return facts


# --- real-world corpora ----------------------------------------------------------------


def test_every_corpus_mail_parses_into_a_consistent_value(corpora: Path) -> None:
    for path in _corpus_mails(corpora):
        raw = path.read_bytes()
        _assert_consistent(parse_mail(raw), raw)


def test_every_corpus_mail_has_a_dedupe_key(corpora: Path) -> None:
    for path in _corpus_mails(corpora):
        raw = path.read_bytes()
        parsed = parse_mail(raw)
        if parsed.message_id:
            assert dedupe_key(raw).startswith(f"mid:{parsed.message_id} "), path
        else:
            assert dedupe_key(raw).startswith("sha256:"), path


def test_flanker_subjects_are_decoded(corpora: Path) -> None:
    for name, expected, parsed in _flanker_facts(corpora, "subject"):
        # One-line header values are stripped; flanker keeps a trailing space of torture.eml.
        assert parsed.subject == expected.strip(), name


def test_flanker_from_and_to_headers_give_name_and_lowercased_email(corpora: Path) -> None:
    _, files = _flanker(corpora)
    checked = 0
    for key, field in (("header_from", "from_addr"), ("header_to", "to")):
        for name, expected, parsed in _flanker_facts(corpora, key):
            if "bounce" in files[name]["kind"]:
                continue  # flanker states the From of the returned original, not of the bounce
            [(display, email)] = getaddresses([expected])
            found = getattr(parsed, field)
            first = found[0] if isinstance(found, tuple) else found
            assert (first.name, first.email) == (display, email.lower()), name
            checked += 1
    assert checked >= 3


def test_flanker_references_are_kept_oldest_first(corpora: Path) -> None:
    for name, expected, parsed in _flanker_facts(corpora, "references"):
        assert parsed.references == tuple(expected), name


def test_flanker_enclosed_messages_are_named_attachments(corpora: Path) -> None:
    for name, (content_type, params), parsed in _flanker_facts(corpora, "part_2_content_type"):
        found = [(a.filename, a.content_type) for a in parsed.attachments]
        assert (params["name"], content_type) in found, name


def test_flanker_attachment_names_are_decoded(corpora: Path) -> None:
    named = _flanker_facts(corpora, "attachment_detected_file_name")
    for name, expected, parsed in named:
        assert expected in [a.filename for a in parsed.attachments], name
    # The long Russian name is RFC 2231/raw UTF-8 cut mid-character by Yahoo.
    for name, prefix, parsed in _flanker_facts(corpora, "attachment_file_name_prefix"):
        assert any(a.filename.startswith(prefix) for a in parsed.attachments), name


def test_flanker_attachment_types_have_the_detected_major_type(corpora: Path) -> None:
    # flanker sniffs the bytes; we trust the declared type, or the name when it is broken.
    for name, expected, parsed in _flanker_facts(corpora, "attachment_detected_content_type"):
        majors = {a.content_type.split("/")[0] for a in parsed.attachments}
        assert expected.split("/")[0] in majors, name


def test_flanker_bodies_read_as_text_with_newlines(corpora: Path) -> None:
    for key in ("body", "part_body_example"):
        for name, expected, parsed in _flanker_facts(corpora, key):
            assert parsed.text.strip() == expected.replace("\r\n", "\n").strip(), name


def test_flanker_mail_without_final_boundary_keeps_its_first_part(corpora: Path) -> None:
    for name, _, parsed in _flanker_facts(corpora, "first_part_body_non_empty"):
        assert parsed.text.strip(), name


def test_flanker_broken_headers_still_give_a_subject(corpora: Path) -> None:
    for name, _, parsed in _flanker_facts(corpora, "subject_present"):
        assert parsed.subject, name


def test_endlessly_nested_enclosure_becomes_one_attachment(corpora: Path) -> None:
    root, _ = _flanker(corpora)
    parsed = parse_mail((root / "messages" / "enclosed-endless.eml").read_bytes())
    assert parsed.text == "Hello\n"
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [
        ("thanks.eml", "message/rfc822")
    ]


def test_210_kb_header_is_read(corpora: Path) -> None:
    root, _ = _flanker(corpora)
    raw = (root / "messages" / "long-header.eml").read_bytes()
    parsed = parse_mail(raw)
    _assert_consistent(parsed, raw)
    assert max(len(value) for _, value in parsed.headers) > 100_000
    assert parsed.subject.startswith("Die heiße Zypernsonne")


# --- headers ---------------------------------------------------------------------------


def test_encoded_word_cannot_inject_a_header_line() -> None:
    parsed = parse_mail(_mail("Subject: =?utf-8?q?hi=0D=0ABcc:_evil@example.com?="))
    assert parsed.subject == "hi Bcc: evil@example.com"
    assert parsed.header("subject") == parsed.subject


def test_folded_subject_is_unfolded_onto_one_line() -> None:
    parsed = parse_mail(
        _mail("Subject: a long\n\tsubject =?utf-8?b?w6lsw6h2ZQ==?=\n =?utf-8?q?_!?=")
    )
    assert parsed.subject == "a long subject élève !"


def test_raw_latin1_header_is_recovered() -> None:
    raw = b'From: "Ingo L\xfctkebohle" <Ingo@Example.org>\nSubject: caf\xe9\n\nhi\n'
    parsed = parse_mail(raw)
    assert parsed.from_addr is not None
    assert (parsed.from_addr.name, parsed.from_addr.email) == (
        "Ingo Lütkebohle",
        "ingo@example.org",
    )
    assert parsed.subject == "café"


def test_raw_utf8_header_is_read_as_utf8() -> None:
    parsed = parse_mail("Subject: Привет\n\nhi\n".encode())
    assert parsed.subject == "Привет"


def test_headers_keep_order_duplicates_and_lowercased_names() -> None:
    parsed = parse_mail(_mail("Received: one", "X-Thing: =?utf-8?q?caf=C3=A9?=", "RECEIVED: two"))
    assert parsed.headers == (("received", "one"), ("x-thing", "café"), ("received", "two"))
    assert parsed.header_all("Received") == ("one", "two")


def test_message_ids_are_extracted_from_garbage() -> None:
    parsed = parse_mail(
        _mail(
            "Message-ID: junk <abc@example.com> more junk",
            "In-Reply-To: Your message of Tue, 1 Jan <one@x.org> (Bob's note)",
            "References: <one@x.org>\n  <two@\n x.org> garbage <one@x.org> <three@x.org>",
        )
    )
    assert parsed.message_id == "abc@example.com"
    assert parsed.in_reply_to == ("one@x.org",)
    assert parsed.references == ("one@x.org", "two@x.org", "three@x.org")


def test_message_id_without_brackets_is_still_read() -> None:
    assert parse_mail(_mail("Message-ID: bare@example.com")).message_id == "bare@example.com"


def test_message_id_that_is_only_garbage_is_none() -> None:
    assert parse_mail(_mail("Message-ID: (no id here)")).message_id is None


def test_addresses_are_lowercased_and_encoded_names_keep_commas() -> None:
    parsed = parse_mail(
        _mail(
            "From: =?UTF-8?B?Rm9vLCBCYXI=?= <Foo.Bar@Example.COM>",
            'To: "Doe, Jane" <JANE@x.org>, bob@y.org',
            "Cc: undisclosed-recipients:;",
        )
    )
    assert parsed.from_addr is not None
    assert (parsed.from_addr.name, parsed.from_addr.email) == ("Foo, Bar", "foo.bar@example.com")
    assert [(a.name, a.email) for a in parsed.to] == [
        ("Doe, Jane", "jane@x.org"),
        ("", "bob@y.org"),
    ]
    assert parsed.cc == ()


def test_invalid_address_is_skipped_with_a_defect() -> None:
    parsed = parse_mail(_mail("To: not-an-address, ok@example.com"))
    assert [a.email for a in parsed.to] == ["ok@example.com"]
    assert any("not-an-address" in note for note in parsed.defects)


@pytest.mark.parametrize(("address", "expected"), [
    ("carol@customer.example", True),
    ("Carol.O'Neil+tag@Sub.Customer-Example.COM", True),
    ("carol@[192.0.2.1]", True),
    ("carol@bücher.example", True),
    ('"carol smith"@example.com', False),  # the stdlib writes it back differently
    ("=?utf-8?q?x?=@example.com", False),  # read as an encoded word, not as written
    ("a..b@example.com", False),
    (".a@example.com", False),
    ("carol smith@example.com", False),
    ("<carol>@example.com", False),
    ("carol@-bad.example", False),
    ("carol@", False),
    ("@example.com", False),
])
def test_is_mailbox_takes_only_addresses_a_reply_can_be_written_to(
        address: str, expected: bool) -> None:
    assert is_mailbox(address) is expected


def test_date_is_timezone_aware() -> None:
    parsed = parse_mail(_mail("Date: Mon, 9 Jul 2012 22:37:56 -0700"))
    assert parsed.date == datetime(2012, 7, 10, 5, 37, 56, tzinfo=UTC)
    assert parsed.date is not None and parsed.date.tzinfo is not None


def test_date_with_unknown_zone_is_read_as_utc() -> None:
    parsed = parse_mail(_mail("Date: Mon, 9 Jul 2012 22:37:56 -0000"))
    assert parsed.date == datetime(2012, 7, 9, 22, 37, 56, tzinfo=UTC)


def test_unreadable_date_is_none_with_a_defect() -> None:
    parsed = parse_mail(_mail("Date: the day after tomorrow"))
    assert parsed.date is None
    assert any("Date" in note for note in parsed.defects)


# --- bodies ----------------------------------------------------------------------------


def test_unknown_charset_falls_back_to_utf8_with_a_defect() -> None:
    raw = _mail("Content-Type: text/plain; charset=x-klingon", body="na\xefve\n")
    parsed = parse_mail(raw)
    assert parsed.text == "na\xefve\n"
    assert any("x-klingon" in note for note in parsed.defects)


def test_lying_charset_replaces_invalid_bytes_with_a_defect() -> None:
    raw = _mail("Content-Type: text/plain; charset=utf-8", body=b"caf\xe9 ok\n")
    parsed = parse_mail(raw)
    assert parsed.text == "caf\ufffd ok\n"
    assert any("utf-8" in note for note in parsed.defects)


def test_declared_charset_is_used() -> None:
    raw = _mail("Content-Type: text/plain; charset=koi8-r", body="Привет\n".encode("koi8-r"))
    assert parse_mail(raw).text == "Привет\n"


def test_quoted_printable_and_base64_bodies_are_decoded() -> None:
    qp = _mail(
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        body="caf=C3=A9 soft=\nbreak\n",
    )
    b64 = _mail("Content-Transfer-Encoding: base64", body="aGVsbG8NCndvcmxkDQo=\n")
    assert parse_mail(qp).text == "café softbreak\n"
    assert parse_mail(b64).text == "hello\nworld\n"


def test_cr_only_mail_reads_like_lf_mail() -> None:
    lf = _mail("Subject: old mac", "Message-ID: <m@x>", body="line one\nline two\n")
    cr_only = lf.replace(b"\n", b"\r")
    parsed = parse_mail(cr_only)
    assert (parsed.subject, parsed.message_id, parsed.text) == (
        "old mac",
        "m@x",
        "line one\nline two\n",
    )
    assert parsed.size == len(cr_only)


def test_crlf_mail_reads_like_lf_mail() -> None:
    lf = _mail("Subject: windows", body="a\nb\n")
    crlf = parse_mail(lf.replace(b"\n", b"\r\n"))
    assert (crlf.subject, crlf.text) == ("windows", "a\nb\n")


def test_html_only_mail_becomes_text() -> None:
    html = "<html><body><p>Hello <b>there</b></p><script>x()</script><p>Bye</p></body></html>"
    parsed = parse_mail(_mail("Content-Type: text/html; charset=utf-8", body=html))
    assert "Hello there" in parsed.text and "Bye" in parsed.text
    assert "<" not in parsed.text and "x()" not in parsed.text


def _alternative(plain: str) -> bytes:
    return _mail(
        'Content-Type: multipart/alternative; boundary="b"',
        body=(
            f"--b\nContent-Type: text/plain\n\n{plain}\n"
            "--b\nContent-Type: text/html\n\n<p>from html</p>\n--b--\n"
        ),
    )


def test_plain_text_is_preferred_over_html() -> None:
    assert parse_mail(_alternative("from plain")).text == "from plain"


def test_blank_plain_text_gives_way_to_html() -> None:
    assert parse_mail(_alternative("  ")).text.strip() == "from html"


def test_mail_without_any_text_has_empty_text() -> None:
    raw = _mail("Content-Type: application/pdf", "Content-Transfer-Encoding: base64", body="JVBE\n")
    parsed = parse_mail(raw)
    assert parsed.text == ""
    assert [a.content_type for a in parsed.attachments] == ["application/pdf"]


# --- attachments -----------------------------------------------------------------------


def _mixed(*parts: str) -> bytes:
    body = "".join(f"--sep\n{part}\n" for part in parts) + "--sep--\n"
    return _mail('Content-Type: multipart/mixed; boundary="sep"', body=body)


def test_attachment_has_decoded_size_and_hash() -> None:
    raw = _mixed(
        "Content-Type: text/plain\n\nsee attached",
        "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        'Content-Disposition: attachment; filename="data.bin"\n\nAAECAwQ=',
    )
    parsed = parse_mail(raw)
    assert parsed.text == "see attached"
    [attachment] = parsed.attachments
    expected = bytes([0, 1, 2, 3, 4])
    assert (attachment.filename, attachment.content_type) == (
        "data.bin",
        "application/octet-stream",
    )
    assert (attachment.size, attachment.sha256) == (5, hashlib.sha256(expected).hexdigest())


def test_rfc2231_and_encoded_word_filenames_are_decoded() -> None:
    raw = _mixed(
        "Content-Type: application/pdf\n"
        "Content-Disposition: attachment; filename*=utf-8''%D0%9E%D1%82%D1%87%D1%91%D1%82.pdf\n\nx",
        'Content-Type: image/png; name="=?utf-8?q?b=C3=A9b=C3=A9.png?="\n\nx',
        "Content-Type: text/plain\n"
        'Content-Disposition: attachment;\n filename*0="long ";\n filename*1="name.txt"\n\nx',
    )
    assert [(a.filename, a.content_type) for a in parse_mail(raw).attachments] == [
        ("Отчёт.pdf", "application/pdf"),
        ("bébé.png", "image/png"),
        ("long name.txt", "text/plain"),
    ]


def test_unnamed_non_text_leaf_is_an_attachment_with_empty_name() -> None:
    raw = _mixed("Content-Type: text/plain\n\nhi", "Content-Type: image/gif\n\nGIF89a")
    assert [(a.filename, a.content_type) for a in parse_mail(raw).attachments] == [
        ("", "image/gif")
    ]


def test_broken_content_type_of_a_named_part_is_guessed_from_the_name() -> None:
    raw = _mixed('Content-Type: ; name="photo.jpg"\nContent-Disposition: attachment\n\nx')
    assert [a.content_type for a in parse_mail(raw).attachments] == ["image/jpeg"]


def test_multipart_without_boundary_is_read_as_text() -> None:
    parsed = parse_mail(_mail("Content-Type: multipart/mixed", body="just text\n"))
    assert parsed.text == "just text\n"
    assert any("boundary" in note for note in parsed.defects)


def test_deep_nesting_is_capped_with_a_defect() -> None:
    depth = 1500
    opening = "".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth)
    )
    closing = "".join(f"--b{i}--\n" for i in reversed(range(depth)))
    raw = f"Subject: deep\n{opening}Content-Type: text/plain\n\ninner\n{closing}".encode()
    parsed = parse_mail(raw)
    _assert_consistent(parsed, raw)
    assert parsed.subject == "deep"
    assert any("nested deeper" in note for note in parsed.defects)


def test_part_count_is_capped_with_a_defect() -> None:
    raw = _mixed(*(["Content-Type: image/gif\n\nGIF"] * 1500))
    parsed = parse_mail(raw)
    assert 0 < len(parsed.attachments) < 1500
    assert any("MIME parts" in note for note in parsed.defects)


# --- work per mail is bounded (finding 6 of the hardening review) ----------------------


def _folded_encoded_words(size: int) -> bytes:
    """The reviewer's 3.3 MB mail: a Subject of adjacent encoded words, one per folded line."""
    word = b"=?utf-8?q?caf=C3=A9_?="
    head = b"From: <mallory@evil.example>\nMessage-ID: <ew@evil.example>\nSubject: "
    return head + b"\n ".join([word] * (size // (len(word) + 2))) + b"\n\nbody\n"


def test_3_mb_of_folded_encoded_words_is_cut_at_the_header_limit_with_a_note() -> None:
    raw = _folded_encoded_words(3_300_000)
    parsed = parse_mail(raw)
    _assert_consistent(parsed, raw)
    assert parsed.subject.startswith("café café café")
    assert 0.2 * MAX_HEADER_CHARS < len(parsed.subject) <= MAX_HEADER_CHARS
    assert [note for note in parsed.cut if note.startswith("header Subject:")], parsed.cut
    assert set(parsed.cut) <= set(parsed.defects)
    assert (parsed.message_id, parsed.text) == ("ew@evil.example", "body\n")


def test_adjacent_encoded_words_join_and_the_space_between_them_goes() -> None:
    # RFC 2047 §6.2; a character may be split across two words of the same charset.
    parsed = parse_mail(_mail(
        "Subject: Re: =?utf-8?q?caf=C3?= =?utf-8?b?qQ==?=\n =?iso-8859-1?q?_cr=E8me?= ok"))
    assert parsed.subject == "Re: café crème ok"
    assert parsed.cut == ()


def test_undecodable_encoded_word_alone_is_kept_as_written() -> None:
    parsed = parse_mail(_mail("Subject: =?utf-8?b?w6k?= =?utf-8?b?a?= =?utf-8?q?=C3=A9?="))
    assert parsed.subject == "é =?utf-8?b?a?= é"
    assert any("undecodable encoded-word" in note for note in parsed.defects)


def test_punycode_is_no_mail_charset() -> None:
    # Python decodes punycode in quadratic time (400 KB: 33 s); no mailer declares it.
    parsed = parse_mail(_mail("Content-Type: text/plain; charset=punycode", body="abc-def\n"))
    assert parsed.text == "abc-def\n"
    assert "body: unknown charset 'punycode', read as utf-8" in parsed.defects


def test_parameters_of_a_huge_content_type_are_cut_at_their_limit() -> None:
    # The stdlib splits parameters in time quadratic in their number.
    params = "; a=b" * (4 * MAX_PARAMETER_HEADER_CHARS // 5)
    parsed = parse_mail(_mail(f"Content-Type: text/plain; charset=iso-8859-1{params}",
                              body=b"caf\xe9\n"))
    assert parsed.text == "café\n"
    assert [note for note in parsed.cut if note.startswith("header Content-Type:")], parsed.cut


def test_huge_html_table_is_converted_to_text_only_up_to_the_limit() -> None:
    row = "<tr><td>cell</td><td>12345</td></tr>\n"
    rows_in_limit = MAX_HTML_CHARS // len(row)
    html = "<html><body><table>" + row * (3 * rows_in_limit) + "</table></body></html>"
    parsed = parse_mail(_mail("Content-Type: text/html; charset=utf-8", body=html))
    assert 0.9 * rows_in_limit < parsed.text.count("12345") <= rows_in_limit
    assert [note for note in parsed.cut if note.startswith("HTML body:")], parsed.cut


def test_mail_read_past_its_time_budget_is_cut_with_a_note_and_keeps_its_sender() -> None:
    seconds = itertools.count()  # a clock that moves one second each time it is read
    raw = _mail("From: Carol <carol@customer.example>", "Subject: hi", *(
        f"X-Filler-{n}: {n}" for n in range(20)), body="the text\n")
    parsed = parse_mail(raw, budget=5.0, clock=lambda: float(next(seconds)))
    assert parsed.from_addr is not None and parsed.from_addr.email == "carol@customer.example"
    assert parsed.subject == "hi"
    assert parsed.text == "" and 0 < len(parsed.headers) < 22
    assert [note for note in parsed.cut if "budget of 5 s" in note], parsed.cut


def test_normal_mail_is_not_cut() -> None:
    parsed = parse_mail(_alternative("from plain"))
    assert parsed.cut == () and parsed.text == "from plain"


# --- dedupe_key ------------------------------------------------------------------------


def test_dedupe_key_is_the_message_id_whatever_its_formatting() -> None:
    variants = [
        _mail("Message-ID: <abc@example.com>", body="one\n"),
        _mail("message-id:<abc@example.com>   ", body="one\n"),
        _mail("Message-Id:\n  <abc@example.com> (comment)", body="one\n"),
        _mail("Message-ID: <abc@example.com>", body="one\n").replace(b"\n", b"\r\n"),
    ]
    keys = {dedupe_key(raw) for raw in variants}
    assert len(keys) == 1 and keys.pop().startswith("mid:abc@example.com ")


def test_the_same_mail_again_is_a_duplicate_though_relays_added_headers() -> None:
    mail = _mail("From: carol@customer.example", "Subject: down", "Message-ID: <abc@x>",
                 body="Our app is down.\n")
    relayed = b"Received: from mx.example.com by imap.example.com\nDelivered-To: s@x\n" + mail
    assert dedupe_key(relayed) == dedupe_key(mail)


def test_another_mail_under_a_reused_message_id_is_not_a_duplicate() -> None:
    """Finding 5: the first mail with a Message-ID must not make a different one vanish."""
    real = _mail("From: carol@customer.example", "Message-ID: <abc@x>", body="real\n")
    planted = _mail("From: mallory@evil.example", "Message-ID: <abc@x>", body="real\n")
    alert = _mail("From: carol@customer.example", "Message-ID: <abc@x>", body="disk full\n")
    assert len({dedupe_key(real), dedupe_key(planted), dedupe_key(alert)}) == 3


def test_dedupe_key_without_message_id_hashes_content_across_line_endings() -> None:
    lf = _mail("Subject: no id", body="same body\n")
    keys = {
        dedupe_key(lf),
        dedupe_key(lf.replace(b"\n", b"\r\n")),
        dedupe_key(lf.replace(b"\n", b"\r")),
    }
    assert keys == {"sha256:" + hashlib.sha256(lf).hexdigest()}
    assert dedupe_key(lf.replace(b"same", b"other")) not in keys


def test_dedupe_key_ignores_message_ids_in_the_body() -> None:
    raw = _mail("Subject: forwarded", body="Message-ID: <inner@example.com>\n")
    assert dedupe_key(raw).startswith("sha256:")


def test_dedupe_key_of_empty_or_garbage_bytes_is_a_hash() -> None:
    for raw in (b"", b"\x00\xff\r\r\n", b"Message-ID: <>\n\n"):
        assert (
            dedupe_key(raw)
            == "sha256:"
            + hashlib.sha256(raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")).hexdigest()
        )


# --- generated malformed MIME ----------------------------------------------------------

_CHARSETS = st.sampled_from(
    ["utf-8", "us-ascii", "iso-8859-1", "koi8-r", "x-unknown", "base64", "utf-7", "idna", ""]
)
_ENCODINGS = st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "bogus"])
_NOISE = st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
_BOUNDARIES = st.text(alphabet="abcXYZ019'()+_,-./:=? ", min_size=0, max_size=12)
_HEADER_VALUES = _NOISE | st.sampled_from(
    [
        b"=?utf-8?q?a=0D=0Ab?=",
        b"=?bogus?b?!!!?=",
        b"=?utf-8?b?w6k?=",
        b"<a@b> <a@b> garbage <",
        b'"x" <X@Y>, ,;:<>@',
        b"Mon, 32 Foo 99999 25:61:61 +9999",
        b"x" * 5000,
    ]
)


@st.composite
def _leaf_part(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(["text/plain", "text/html", "image/png", "message/rfc822", ""]))
    headers = [
        b"Content-Type: %s; charset=%s" % (ctype.encode(), draw(_CHARSETS).encode()),
        b"Content-Transfer-Encoding: " + draw(_ENCODINGS).encode(),
    ]
    if draw(st.booleans()):
        headers.append(b"Content-Disposition: attachment; filename*=" + draw(_NOISE))
    body = draw(_NOISE) + b"\x00" * draw(st.integers(0, 2)) + b"y" * draw(st.integers(0, 3000))
    return b"\n".join(headers) + b"\n\n" + body


def _multipart(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        boundary = draw(_BOUNDARIES).encode()
        parts = draw(st.lists(children, max_size=4))
        body = b"".join(b"--" + boundary + b"\n" + part + b"\n" for part in parts)
        if draw(st.booleans()):
            body += b"--" + boundary + b"--\n"  # sometimes the close delimiter is missing
        declared = draw(st.sampled_from([boundary, b"", b"other"]))
        subtype = draw(st.sampled_from([b"mixed", b"alternative", b"digest", b"related"]))
        return b'Content-Type: multipart/%s; boundary="%s"\n\n%s' % (subtype, declared, body)

    return build()


@st.composite
def _malformed_mail(draw: st.DrawFn) -> bytes:
    names = st.sampled_from(
        [b"Subject", b"From", b"To", b"Cc", b"Date", b"Message-ID", b"References"]
    )
    headers = b"".join(
        name + b": " + value + b"\n"
        for name, value in draw(st.lists(st.tuples(names, _HEADER_VALUES), max_size=6))
    )
    body = draw(st.recursive(_leaf_part(), _multipart, max_leaves=8))
    raw = headers + body
    ending = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    return raw.replace(b"\n", ending)


@settings(max_examples=300, deadline=None)
@given(_malformed_mail())
def test_parse_mail_never_raises_on_malformed_mime(raw: bytes) -> None:
    _assert_consistent(parse_mail(raw), raw)
    assert dedupe_key(raw).startswith(("mid:", "sha256:"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_mail_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    _assert_consistent(parse_mail(raw), raw)
    assert dedupe_key(raw).startswith(("mid:", "sha256:"))
