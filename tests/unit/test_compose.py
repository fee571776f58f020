"""Outbound mail: templates autoescape HTML, headers never carry CR/LF from input."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from pathlib import Path

from supportd.mail.compose import Headers, compose_mail
from supportd.outbound.templates import Renderer
from supportd.tickets.model import Priority, Status, Ticket
from supportd.tickets.service import TEMPLATE_KINDS

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TICKET = Ticket(7, "<script>alert(1)</script>", Status.NEW, Priority.NORMAL, "tier1", None,
                "c@x", None, NOW, NOW)


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
