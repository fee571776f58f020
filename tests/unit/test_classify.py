"""classify: which incoming mails supportd may answer automatically (RFC 3834 loop safety)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supportd.mail.addresses import Addresses
from supportd.mail.classify import Decision, classify
from supportd.mail.parse import Address, Attachment, ParsedMail, parse_mail

SUPPORT = "support@help.example.com"
OWN = Addresses(support=frozenset({SUPPORT}), hmac_key=b"k" * 32, agents=())
ALICE = Address("alice@customer.example", "Alice Customer")


def make_mail(
    *,
    headers: tuple[tuple[str, str], ...] = (),
    subject: str = "My printer is on fire",
    sender: Address | None = ALICE,
    reply_to: tuple[Address, ...] = (),
    in_reply_to: tuple[str, ...] = (),
    attachments: tuple[Attachment, ...] = (),
    text: str = "Hello, please help.\n",
) -> ParsedMail:
    return ParsedMail(
        message_id="m1@customer.example",
        in_reply_to=in_reply_to,
        references=in_reply_to,
        subject=subject,
        from_addr=sender,
        reply_to=reply_to,
        to=(Address(SUPPORT),),
        cc=(),
        date=None,
        headers=(("subject", subject), *headers),
        text=text,
        attachments=attachments,
        defects=(),
        size=100,
    )


def decide(
    mail: ParsedMail,
    *,
    envelope_sender: str | None = "alice@customer.example",
) -> Decision:
    return classify(mail, envelope_sender=envelope_sender, addresses=OWN)


def attachment(content_type: str) -> Attachment:
    return Attachment(filename="", content_type=content_type, size=10, sha256="0" * 64)


# --- one example per check -------------------------------------------------------------------


def test_plain_customer_mail_is_answerable() -> None:
    assert decide(make_mail()) == Decision(
        True, "human", "no sign of automatic or bulk mail; may be answered"
    )


def test_mail_from_null_envelope_sender_is_never_answered() -> None:
    decision = decide(make_mail(), envelope_sender="")
    assert (decision.answerable, decision.check) == (False, "null_sender")


def test_null_return_path_marks_null_sender_when_envelope_is_unknown() -> None:
    mail = make_mail(headers=(("return-path", "<>"),))
    assert decide(mail, envelope_sender=None).check == "null_sender"


def test_ordinary_return_path_with_unknown_envelope_is_answerable() -> None:
    mail = make_mail(headers=(("return-path", "<alice@customer.example>"),))
    assert decide(mail, envelope_sender=None).answerable


def test_from_null_address_is_never_answered() -> None:
    mail = make_mail(sender=None, headers=(("from", "<>"),))
    assert decide(mail).check == "null_sender"


def test_mail_from_our_own_address_is_not_answered() -> None:
    mail = make_mail(sender=Address(SUPPORT, "Help Desk"))
    assert decide(mail).check == "our_own_mail"


def test_mail_from_one_of_our_reply_token_addresses_is_our_own() -> None:
    mail = make_mail(sender=Address("support+42-a1b2c3@help.example.com"))
    assert decide(mail).check == "our_own_mail"


def test_x_loop_naming_our_address_is_a_mail_loop() -> None:
    mail = make_mail(headers=(("x-loop", f"<{SUPPORT.upper()}>"),))
    decision = decide(mail)
    assert (decision.check, decision.reason) == (
        "our_own_mail",
        f"X-Loop: {SUPPORT} shows a mail loop",
    )


def test_x_loop_naming_another_system_is_answerable() -> None:
    mail = make_mail(headers=(("x-loop", "tickets@other.example"),))
    assert decide(mail).answerable


@pytest.mark.parametrize("value", ["auto-replied", "auto-generated", "Auto-Notified; owner=x", ""])
def test_auto_submitted_other_than_no_is_not_answered(value: str) -> None:
    decision = decide(make_mail(headers=(("auto-submitted", value),)))
    assert (decision.answerable, decision.check) == (False, "auto_submitted")


def test_auto_submitted_reason_names_the_keyword_and_rfc() -> None:
    decision = decide(make_mail(headers=(("auto-submitted", "auto-replied (vacation)"),)))
    assert decision.reason == "Auto-Submitted: auto-replied (RFC 3834)"


@pytest.mark.parametrize("value", ["no", "No", " no (a person wrote this)"])
def test_auto_submitted_no_is_answerable(value: str) -> None:
    assert decide(make_mail(headers=(("auto-submitted", value),))).answerable


def test_multipart_report_with_delivery_status_is_a_bounce() -> None:
    content_type = 'multipart/report; report-type="delivery-status"; boundary="b"'
    mail = make_mail(headers=(("content-type", content_type),))
    assert decide(mail).check == "bounce"


def test_message_delivery_status_part_is_a_bounce() -> None:
    mail = make_mail(attachments=(attachment("message/delivery-status"),))
    assert decide(mail).check == "bounce"


def test_mail_from_mailer_daemon_is_a_bounce() -> None:
    mail = make_mail(sender=Address("mailer-daemon@mx.example.net", "Mail Delivery System"))
    assert decide(mail).check == "bounce"


def test_mail_from_unnamed_postmaster_is_a_bounce() -> None:
    mail = make_mail(sender=Address("postmaster@mx.example.net"))
    assert decide(mail).check == "bounce"


def test_mail_from_postmaster_signed_by_a_person_is_answerable() -> None:
    mail = make_mail(sender=Address("postmaster@customer.example", "Bob Smith"))
    assert decide(mail).answerable


@pytest.mark.parametrize(
    "subject",
    [
        "Undelivered Mail Returned to Sender",
        "Undeliverable: Invoice 7",
        "failure notice",
        "Unzustellbar: Rechnung 7",
    ],
)
def test_non_delivery_subject_is_a_bounce(subject: str) -> None:
    assert decide(make_mail(subject=subject)).check == "bounce"


@pytest.mark.parametrize(
    "subject", ["Fwd: Undelivered Mail Returned to Sender", "Undelivered parcel 123"]
)
def test_customer_writing_about_a_failed_delivery_is_answerable(subject: str) -> None:
    assert decide(make_mail(subject=subject)).answerable


def test_feedback_report_is_not_answered() -> None:
    content_type = "multipart/report; report-type=feedback-report; boundary=b"
    mail = make_mail(headers=(("content-type", content_type),))
    assert decide(mail).check == "feedback_report"


def test_microsoft_complaint_subject_is_a_feedback_report() -> None:
    mail = make_mail(subject="complaint about message from 192.0.2.1")
    assert decide(mail).check == "feedback_report"


def test_read_receipt_is_not_answered() -> None:
    content_type = "multipart/report; report-type=disposition-notification; boundary=b"
    mail = make_mail(headers=(("content-type", content_type),))
    assert decide(mail).check == "disposition_notification"


def test_disposition_notification_part_is_a_read_receipt() -> None:
    mail = make_mail(attachments=(attachment("message/disposition-notification"),))
    assert decide(mail).check == "disposition_notification"


@pytest.mark.parametrize(
    "header",
    [
        ("x-autoreply", "yes"),
        ("x-autorespond", "vacation"),
        ("x-ms-exchange-inbox-rules-loop", "bob@customer.example"),
        ("x-precedence", "auto_reply"),
        ("x-apple-action", "VACATION"),
        ("x-auto-response-suppress", "All"),
        ("x-auto-response-suppress", "DR, OOF, AutoReply"),
    ],
)
def test_auto_reply_headers_are_not_answered(header: tuple[str, str]) -> None:
    decision = decide(make_mail(headers=(header,)))
    assert (decision.answerable, decision.check) == (False, "auto_reply")


def test_suppressing_only_receipts_still_allows_an_acknowledgement() -> None:
    mail = make_mail(headers=(("x-auto-response-suppress", "DR, RN, NRN"),))
    assert decide(mail).answerable


@pytest.mark.parametrize("subject", ["Out of Office: Invoice 7", "Automatic reply: Invoice 7"])
def test_out_of_office_subject_answering_our_mail_is_an_auto_reply(subject: str) -> None:
    mail = make_mail(subject=subject, in_reply_to=("ack-7@help.example.com",))
    assert decide(mail).check == "auto_reply"


def test_out_of_office_subject_alone_is_answerable() -> None:
    mail = make_mail(subject="Out of office notices never arrive")
    assert decide(mail).answerable


@pytest.mark.parametrize("value", ["bulk", "junk", "List"])
def test_precedence_bulk_junk_or_list_is_not_answered(value: str) -> None:
    assert decide(make_mail(headers=(("precedence", value),))).check == "precedence_bulk"


def test_precedence_first_class_is_answerable() -> None:
    assert decide(make_mail(headers=(("precedence", "first-class"),))).answerable


@pytest.mark.parametrize(
    "header",
    [("list-id", "<users.lists.example.org>"), ("list-unsubscribe", "<mailto:u@example.org>")],
)
def test_mailing_list_mail_is_not_answered(header: tuple[str, str]) -> None:
    assert decide(make_mail(headers=(header,))).check == "mailing_list"


def test_no_reply_sender_is_not_answered() -> None:
    mail = make_mail(sender=Address("no-reply@notifications.example.com"))
    assert decide(mail).check == "no_reply_sender"


def test_no_reply_sender_with_a_personal_reply_to_is_answerable() -> None:
    mail = make_mail(
        sender=Address("noreply@forms.example.com"),
        reply_to=(Address("alice@customer.example"),),
    )
    assert decide(mail).answerable


def test_first_matching_check_decides() -> None:
    mail = make_mail(headers=(("auto-submitted", "auto-replied"), ("list-id", "<l.example>")))
    assert decide(mail, envelope_sender="").check == "null_sender"


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(
                ["content-type", "auto-submitted", "x-loop", "return-path", "from", "precedence"]
            ),
            st.text(max_size=60),
        ),
        max_size=4,
    ),
    subject=st.text(max_size=60),
)
def test_classify_decides_on_any_header_values(
    headers: list[tuple[str, str]], subject: str
) -> None:
    decision = decide(make_mail(headers=tuple(headers), subject=subject))
    assert decision.check and decision.reason


# --- real-world mail -------------------------------------------------------------------------


def _parse(path: Path) -> ParsedMail:
    return parse_mail(path.read_bytes())


def _without_return_path(mail: ParsedMail) -> ParsedMail:
    return replace(mail, headers=tuple(h for h in mail.headers if h[0] != "return-path"))


def test_no_machine_generated_sisimai_mail_is_answered(corpora: Path) -> None:
    paths = sorted((corpora / "sisimai" / "maildir" / "bsd").glob("*.eml"))
    assert len(paths) > 300
    answered = [
        path.name for path in paths if decide(_parse(path), envelope_sender=None).answerable
    ]
    assert answered == []


# Via SMTP the envelope may be an ordinary address (a forwarder) and no Return-Path is written:
# machine mail must be recognised by its own signs as well.
def test_sisimai_machine_mail_is_recognised_without_its_null_sender(corpora: Path) -> None:
    paths = sorted((corpora / "sisimai" / "maildir" / "bsd").glob("*.eml"))
    answered = [
        path.name
        for path in paths
        if decide(
            _without_return_path(_parse(path)), envelope_sender="relay@forwarder.example"
        ).answerable
    ]
    assert answered == []


@pytest.mark.parametrize("name", ["is-not-bounce-01.eml", "is-not-bounce-02.eml"])
def test_human_sisimai_mail_is_answerable(corpora: Path, name: str) -> None:
    decision = decide(_parse(corpora / "sisimai" / "maildir" / "not" / name), envelope_sender=None)
    assert decision == Decision(True, "human", decision.reason)


def test_auto_submitted_notice_that_sisimai_calls_no_bounce_is_still_unanswered(
    corpora: Path,
) -> None:
    path = corpora / "sisimai" / "maildir" / "not" / "rb-issue-368-bug.eml"
    assert not decide(_parse(path), envelope_sender=None).answerable


@pytest.mark.parametrize(
    "name",
    [
        *(f"bounce/{path}" for path in ("broken-mime.eml", "delayed-broken.eml", "delayed.eml")),
        *(f"bounce/{path}" for path in ("gmail-invalid-address.eml", "gmail-no-dns.eml")),
        *(f"bounce/{path}" for path in ("mailbox-full.eml", "no-mx.eml", "office365.eml")),
        "bounce/zed.eml",
        "complaints/aol.eml",
        "complaints/yahoo.eml",
        "disposition-notification.eml",
    ],
)
def test_flanker_bounces_complaints_and_receipts_are_not_answered(corpora: Path, name: str) -> None:
    path = corpora / "flanker" / "tests" / "fixtures" / "messages" / name
    assert not decide(_parse(path), envelope_sender="relay@forwarder.example").answerable


# Old apache.org list archives: Precedence: bulk, correctly never answered.
LIST_ARCHIVE_MAILS = frozenset(
    {"apache-message-news-mime.eml", "from-encoding.eml", "message-external-body.eml"}
)


# A read receipt, and attached-pdf.eml which names no sender at all: nobody to answer.
NOT_ORDINARY = {"disposition-notification.eml", "attached-pdf.eml"}


def test_ordinary_flanker_mail_is_answerable(corpora: Path) -> None:
    folder = corpora / "flanker" / "tests" / "fixtures" / "messages"
    ordinary = [
        path
        for path in sorted(folder.glob("*.eml"))
        if path.name not in LIST_ARCHIVE_MAILS | NOT_ORDINARY
    ]
    assert len(ordinary) >= 30
    refused = [
        path.name for path in ordinary if not decide(_parse(path), envelope_sender=None).answerable
    ]
    assert refused == []


@pytest.mark.parametrize("name", sorted(LIST_ARCHIVE_MAILS))
def test_flanker_list_archive_mail_is_bulk(corpora: Path, name: str) -> None:
    path = corpora / "flanker" / "tests" / "fixtures" / "messages" / name
    assert decide(_parse(path), envelope_sender=None).check == "precedence_bulk"


def test_mail_naming_no_sender_anywhere_is_not_answered() -> None:
    mail = parse_mail(b"To: support@example.com\nSubject: hello\n\nwho am I?\n")
    decision = classify(mail, envelope_sender=None,
                        addresses=Addresses(support=frozenset(), hmac_key=b"", agents=()))
    assert (decision.answerable, decision.check) == (False, "null_sender")
