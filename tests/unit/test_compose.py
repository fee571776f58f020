"""Outbound mail: templates autoescape HTML, headers never carry CR/LF from input."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from supportd.outbound.compose import Headers, compose_mail
from supportd.outbound.templates import TEMPLATE_KINDS, Rendered, Renderer
from supportd.tickets.model import Priority, Status, Ticket

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TICKET = Ticket(7, "<script>alert(1)</script>", Status.NEW, Priority.NORMAL, "tier1", None,
                "c@x", None, NOW, NOW)

HEADERS = Headers(
    from_name="Example Support", from_addr="support@example.com", to="c@x",
    subject="Re: [Support #7] hello", reply_to="support+7-00@example.com",
    message_id="m@example.com", in_reply_to=None, references=(), auto_submitted=None,
    loop_address="support@example.com", date=NOW,
)


def test_shipped_templates_all_load() -> None:
    assert Renderer(REPO / "templates").check(TEMPLATE_KINDS) == []


def test_html_alternative_escapes_customer_text() -> None:
    rendered = Renderer(REPO / "templates").render("acknowledgement", {
        "ticket": TICKET, "support_name": "S", "prefix": "Support", "subject": "x"})
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html
    assert "<script>alert(1)</script>" in rendered.text  # plain text stays as written


def test_headers_from_input_are_folded_onto_one_line() -> None:
    raw = compose_mail(Headers(
        from_name="Evil\r\nBcc: victim@x", from_addr="support@example.com", to="c@x",
        subject="Hi\r\nBcc: victim@x", reply_to="support+7-00@example.com",
        message_id="m@example.com", in_reply_to="a@x", references=("r@x", "a@x"),
        auto_submitted="auto-replied", loop_address="support@example.com", date=NOW,
    ), Renderer(REPO / "templates").render("acknowledgement", {
        "ticket": TICKET, "support_name": "S", "prefix": "Support", "subject": "x"}))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Hi Bcc: victim@x"
    assert msg["Auto-Submitted"] == "auto-replied" and msg["X-Loop"] == "support@example.com"
    assert msg["References"] == "<r@x> <a@x>"
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/alternative", "text/plain", "text/html"]


def test_non_ascii_subject_and_name_are_encoded_and_read_back() -> None:
    raw = compose_mail(Headers(
        from_name="Zoë via Support", from_addr="support@example.com", to="c@x",
        subject="Re: [Support #7] Ärger mit der Rechnung — bitte prüfen " * 3,
        reply_to="support+7-00@example.com", message_id="m@example.com", in_reply_to=None,
        references=tuple(f"ref{i}@example.com" for i in range(12)), auto_submitted=None,
        loop_address="support@example.com", date=NOW,
    ), Renderer(REPO / "templates").render("acknowledgement", {
        "ticket": TICKET, "support_name": "S", "prefix": "Support", "subject": "x"}))
    assert raw.isascii() and all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == ("Re: [Support #7] Ärger mit der Rechnung — bitte prüfen " * 3).strip()
    assert msg["From"].addresses[0].display_name == "Zoë via Support"
    assert len(msg["References"].split()) == 12
    assert msg["Auto-Submitted"] is None


def test_long_headers_are_folded_at_spaces_and_read_back_whole() -> None:
    subject = "Re: [Support #7] " + " ".join(f"word{i}" for i in range(40))
    references = tuple(f"{i}.a-rather-long-message-id@mail.customer.example" for i in range(11))
    raw = compose_mail(replace(HEADERS, subject=subject, references=references),
                       Rendered("text\n", "<p>html</p>"))
    head = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert all(len(line) <= 78 for line in head)  # RFC 5322 §2.1.1
    assert sum(line.startswith(b" ") for line in head) > 5
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == subject
    assert msg["References"].split() == [f"<{r}>" for r in references]


def test_a_word_longer_than_a_line_stays_whole() -> None:
    long_id = "x" * 120 + "@example.com"
    raw = compose_mail(replace(HEADERS, in_reply_to=long_id, references=("a@x", long_id)),
                       Rendered("text\n", "html"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["In-Reply-To"].strip() == f"<{long_id}>"
    assert msg["References"].split() == ["<a@x>", f"<{long_id}>"]
    assert b"\r\n \r\n" not in raw  # no continuation line of whitespace only


def test_an_id_too_long_for_any_line_is_left_out() -> None:
    """RFC 5322 §2.1.1: no line over 998 characters, so such an id cannot be written back."""
    long_id = "x." * 2690 + "@example.com"  # 5 392 characters, as a folded id reads unfolded
    raw = compose_mail(replace(HEADERS, in_reply_to=long_id, references=("a@x", long_id, "b@x")),
                       Rendered("text\n", "html"))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["In-Reply-To"] is None
    assert msg["References"].split() == ["<a@x>", "<b@x>"]


def test_the_longest_id_that_fits_a_line_is_kept_and_one_more_character_is_not() -> None:
    fits = "x" * (998 - len("In-Reply-To: <@example.com>")) + "@example.com"
    raw = compose_mail(replace(HEADERS, in_reply_to=fits, references=(fits,)),
                       Rendered("text\n", "html"))
    assert max(len(line) for line in raw.split(b"\r\n")) == 998  # In-Reply-To, just
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["In-Reply-To"].strip() == msg["References"].strip() == f"<{fits}>"
    raw = compose_mail(replace(HEADERS, in_reply_to="y" + fits, references=("y" + fits,)),
                       Rendered("text\n", "html"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["In-Reply-To"] is None and msg["References"] is None


def test_header_values_from_input_never_break_the_header_block() -> None:
    raw = compose_mail(replace(HEADERS, to="c@x\r\nBcc: victim@x",
                               in_reply_to="a@x\nBcc: victim@x",
                               references=("r@x\rBcc: victim@x",)),
                       Rendered("text\n", "html"))
    assert raw.count(b"\r") == raw.count(b"\r\n") and raw.count(b"\n") == raw.count(b"\r\n")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Bcc"] is None


def test_bodies_are_quoted_printable_utf8_and_read_back_as_written() -> None:
    text = ("Grüße = 100 % — trailing space \nbare CR\rline " + "long " * 40 + "\n"
            "\tindented\n.\nFrom the start of a line\n")
    html = "<p style=\"color: red\">Zoë &amp; co</p>"
    raw = compose_mail(HEADERS, Rendered(text, html))
    assert raw.isascii() and all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert raw.count(b"\n") == raw.count(b"\r\n")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    plain, rich = (p for p in msg.walk() if not p.is_multipart())
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert plain.get_content_charset() == "utf-8"
    # CRLF on the wire (RFC 5322 §2.1); a bare CR from a template is a line end too.
    assert plain.get_content().replace("\r\n", "\n") == text.replace("\r", "\n")
    assert rich.get_content().replace("\r\n", "\n") == html
