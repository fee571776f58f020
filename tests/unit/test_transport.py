"""Outbound transports: the Maildir writer and the pure rules behind SMTP and MX delivery."""

from __future__ import annotations

import random
from pathlib import Path

import aiosmtplib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supportd.outbound.transport import (
    DeliveryError,
    Envelope,
    MaildirTransport,
    delivery_error_from,
    envelope_header_lines,
    line_ending_of,
    maildir_name,
    mx_delivery_order,
    recipients_by_domain,
)

MAIL = b"From: support@example.org\r\nTo: ann@example.com\r\nSubject: Hi\r\n\r\nHello.\r\n"
ENVELOPE = Envelope(
    mail_from="support@example.org", rcpt_to=("ann@example.com",), message_id="abc@example.org"
)


def delivered_files(maildir: Path) -> list[Path]:
    return sorted((maildir / "new").iterdir()) + sorted((maildir / "cur").iterdir())


def folder_names(maildir: Path) -> list[str]:
    return sorted(p.name for p in maildir.iterdir())


# --- Envelope -----------------------------------------------------------------------------


def test_envelope_refuses_a_line_break_in_an_address() -> None:
    with pytest.raises(ValueError, match="line break"):
        Envelope(mail_from="a@x.org\r\nRCPT TO:<b@y.org>", rcpt_to=("c@z.org",), message_id="m")


def test_envelope_needs_a_message_id_and_a_recipient() -> None:
    with pytest.raises(ValueError, match="message_id"):
        Envelope(mail_from="", rcpt_to=("c@z.org",), message_id="")
    with pytest.raises(ValueError, match="no recipients"):
        Envelope(mail_from="", rcpt_to=(), message_id="m@x")


# --- Maildir ------------------------------------------------------------------------------


async def test_maildir_creates_its_folders_and_writes_one_file_in_new(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    await MaildirTransport(maildir).deliver(ENVELOPE, MAIL)
    assert folder_names(maildir) == ["cur", "new", "tmp"]
    assert len(list((maildir / "new").iterdir())) == 1
    assert list((maildir / "tmp").iterdir()) == []


async def test_maildir_file_is_the_mail_after_envelope_lines(tmp_path: Path) -> None:
    envelope = Envelope(
        mail_from="", rcpt_to=("ann@example.com", "bob@example.net"), message_id="m1@x"
    )
    await MaildirTransport(tmp_path).deliver(envelope, MAIL)
    [written] = delivered_files(tmp_path)
    assert written.read_bytes() == (
        b"Return-Path: <>\r\nX-Envelope-To: ann@example.com, bob@example.net\r\n" + MAIL
    )


async def test_delivering_the_same_message_id_twice_leaves_one_file(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path)
    await transport.deliver(ENVELOPE, MAIL)
    await transport.deliver(ENVELOPE, MAIL)
    assert len(delivered_files(tmp_path)) == 1


async def test_a_mail_already_read_into_cur_is_not_written_again(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path)
    await transport.deliver(ENVELOPE, MAIL)
    [written] = delivered_files(tmp_path)
    written.rename(tmp_path / "cur" / f"{written.name}:2,S")  # what a mail reader does
    await transport.deliver(ENVELOPE, MAIL)
    assert [p.name for p in delivered_files(tmp_path)] == [f"{written.name}:2,S"]


async def test_different_message_ids_give_different_files(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path)
    for message_id in ("a/b@x", "a%2Fb@x", "../escape@x"):
        envelope = Envelope(mail_from="", rcpt_to=("c@z.org",), message_id=message_id)
        await transport.deliver(envelope, MAIL)
    assert len(delivered_files(tmp_path)) == 3
    assert folder_names(tmp_path) == ["cur", "new", "tmp"]  # nothing escaped the Maildir


async def test_unwritable_maildir_is_a_temporary_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DeliveryError) as failure:
        await MaildirTransport(blocker / "Maildir").deliver(ENVELOPE, MAIL)
    assert failure.value.permanent is False


async def test_maildir_keeps_every_corpus_mail_byte_for_byte(corpora: Path, tmp_path: Path) -> None:
    mails = sorted((corpora / "flanker").rglob("*.eml"))
    assert mails, "no .eml files under corpora/flanker"
    transport = MaildirTransport(tmp_path)
    for number, path in enumerate(mails):
        raw = path.read_bytes()
        envelope = Envelope(mail_from="s@x.org", rcpt_to=("r@y.org",), message_id=f"{number}@t")
        await transport.deliver(envelope, raw)
        written = (tmp_path / "new" / maildir_name(envelope.message_id)).read_bytes()
        header = envelope_header_lines(envelope, line_ending_of(raw))
        assert written == header + raw, path.name


# --- pure helpers -------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=400))
def test_maildir_name_is_a_safe_file_name(message_id: str) -> None:
    name = maildir_name(message_id)
    assert "/" not in name and ":" not in name and "\0" not in name
    assert not name.startswith(".")
    assert len(name.encode()) <= 200


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_distinct_message_ids_get_distinct_maildir_names(first: str, second: str) -> None:
    if first != second:
        assert maildir_name(first) != maildir_name(second)


def test_plain_message_ids_stay_readable_as_maildir_names() -> None:
    assert maildir_name("20240101.123.ticket-42@support.example.org") == (
        "20240101.123.ticket-42@support.example.org"
    )


@pytest.mark.parametrize(
    ("raw", "eol"),
    [(b"A: b\r\n\r\nx", b"\r\n"), (b"A: b\n\nx", b"\n"), (b"A: b\r\rx", b"\r"), (b"A: b", b"\n")],
)
def test_line_ending_of_matches_the_first_line(raw: bytes, eol: bytes) -> None:
    assert line_ending_of(raw) == eol


def test_many_envelope_recipients_are_folded_under_78_characters() -> None:
    rcpts = tuple(f"customer{n}@example.com" for n in range(10))
    envelope = Envelope(mail_from="a@b.org", rcpt_to=rcpts, message_id="m@x")
    lines = envelope_header_lines(envelope, b"\n").decode().splitlines()
    assert all(len(line) <= 78 for line in lines)
    unfolded = " ".join(line.strip() for line in lines[1:])
    assert unfolded == "X-Envelope-To: " + ", ".join(rcpts)


def test_mx_hosts_are_tried_lowest_preference_first() -> None:
    records = [(30, "c.example."), (10, "a.example."), (20, "b.example.")]
    order = mx_delivery_order("example", records, random.Random(1))
    assert order == ["a.example", "b.example", "c.example"]


def test_mx_hosts_of_equal_preference_are_shuffled_but_kept_after_better_ones() -> None:
    records = [(20, f"backup{n}.example") for n in range(6)] + [(5, "primary.example")]
    orders = {tuple(mx_delivery_order("example", records, random.Random(s))) for s in range(20)}
    assert all(order[0] == "primary.example" for order in orders)
    assert all(sorted(order[1:]) == [f"backup{n}.example" for n in range(6)] for order in orders)
    assert len(orders) > 1


def test_a_domain_without_mx_records_is_its_own_mail_host() -> None:
    assert mx_delivery_order("example.com", [], random.Random(0)) == ["example.com"]


def test_null_mx_is_a_permanent_failure() -> None:
    with pytest.raises(DeliveryError, match="null MX") as failure:
        mx_delivery_order("example.com", [(0, ".")], random.Random(0))
    assert failure.value.permanent is True


def test_recipients_are_grouped_by_case_insensitive_domain() -> None:
    groups = recipients_by_domain(("a@Example.com", "b@example.COM", "c@other.org"))
    assert groups == {
        "example.com": ("a@Example.com", "b@example.COM"),
        "other.org": ("c@other.org",),
    }


def test_a_recipient_without_domain_cannot_be_routed() -> None:
    with pytest.raises(DeliveryError) as failure:
        recipients_by_domain(("postmaster",))
    assert failure.value.permanent is True


@pytest.mark.parametrize(
    ("exc", "permanent"),
    [
        (aiosmtplib.SMTPSenderRefused(550, "5.7.1 no relay", "a@b"), True),
        (aiosmtplib.SMTPDataError(452, "4.3.1 disk full"), False),
        (aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"), False),
        (aiosmtplib.SMTPConnectTimeoutError("timed out"), False),
        (ConnectionRefusedError(111, "refused"), False),
        (
            aiosmtplib.SMTPRecipientsRefused(
                [
                    aiosmtplib.SMTPRecipientRefused(550, "5.1.1 unknown", "a@b"),
                    aiosmtplib.SMTPRecipientRefused(450, "4.2.0 greylisted", "c@d"),
                ]
            ),
            False,
        ),
    ],
)
def test_smtp_failures_are_classified_by_reply_code(exc: Exception, permanent: bool) -> None:
    assert delivery_error_from("mx.example:25", exc).permanent is permanent


def test_smtp_failure_message_quotes_the_server() -> None:
    error = delivery_error_from("mx.example:25", aiosmtplib.SMTPDataError(554, "5.7.1 spam"))
    assert str(error) == "mx.example:25 answered 554 5.7.1 spam"
