"""Finding 10: a Message-ID too long for a header line is never written back on one line."""

from __future__ import annotations

import email.policy
from pathlib import Path

from tests.integration.conftest import Daemon, mail, reply_to

CUSTOMER = "carol@customer.example"
DOMAIN = "@customer.example"
MAX_LINE = 998  # RFC 5322 §2.1.1: a line MUST be no more than 998 characters, CRLF excluded


def long_message_id(length: int) -> str:
    """A dot-atom id of `length` characters, in labels of 60 a client can fold at the dots."""
    left = "".join("." if i % 61 == 60 else "x" for i in range(length - len(DOMAIN)))
    assert not left.endswith(".")
    return left + DOMAIN


def with_folded_ids(raw: bytes, placeholder: str, message_id: str) -> bytes:
    """`raw` with `<placeholder>` replaced by `<message_id>` folded at its dots (RFC 5322
    §4.4 obs-id-left: CFWS around the dots), so that each line of the mail stays short."""
    folded = message_id.replace(".", ".\r\n ", message_id.count(".") - 1)
    assert max(len(line) for line in folded.split("\r\n")) < 80
    return raw.replace(f"<{placeholder}>".encode(), f"<{folded}>".encode())


def outbox_raw(daemon: Daemon, count: int) -> list[bytes]:
    """The bytes of the next `count` mails supportd writes to its Maildir outbox."""
    before = set(daemon.seen_outbox)
    daemon.new_mail(count)
    folder = daemon.folder / "outbox" / "new"
    return [Path(folder, name).read_bytes() for name in sorted(daemon.seen_outbox - before)]


def overlong_lines(raw: bytes) -> list[int]:
    return [len(line) for line in raw.split(b"\r\n") if len(line) > MAX_LINE]


def test_a_5400_character_message_id_keeps_every_line_within_998_and_threads(
        daemon: Daemon) -> None:
    """Finding 10: a customer's folded 5 400-character Message-ID was written back as one
    5 425-character In-Reply-To / References line. Carol writes in with such an id, then
    answers the acknowledgement with it in her References: every line of what supportd writes
    is at most 998 octets (the id that cannot fit a line is left out), and her answer joins
    ticket 1 as any answer does."""
    long_id = long_message_id(5400)
    assert len(long_id) == 5400
    first = mail(sender=CUSTOMER, message_id="<first@customer.example>")
    daemon.send(with_folded_ids(first.as_bytes(policy=email.policy.SMTP),
                                "first@customer.example", long_id),
                mail_from=CUSTOMER, to=["support@example.com"])

    opened = outbox_raw(daemon, 2)  # the acknowledgement to Carol, the notice to Alice
    assert [overlong_lines(raw) for raw in opened] == [[], []]
    sent = [email.message_from_bytes(raw, policy=email.policy.default) for raw in opened]
    [ack] = [m for m in sent if m["To"] == CUSTOMER]
    assert ack["Subject"] == "Re: [Support #1] Our app is down"
    assert ack["In-Reply-To"] is None  # her id does not fit a line: left out

    answer = reply_to(ack, sender=CUSTOMER, body="It is still down.")
    answer.replace_header("References", f"<placeholder@customer.example> {ack['Message-ID']}")
    daemon.send(with_folded_ids(answer.as_bytes(policy=email.policy.SMTP),
                                "placeholder@customer.example", long_id),
                mail_from=CUSTOMER, to=[str(answer["To"])])

    [notice] = outbox_raw(daemon, 1)
    assert overlong_lines(notice) == []
    assert b"It is still down." in notice
    assert daemon.query("SELECT count(*) AS n FROM tickets")[0]["n"] == 1
    assert len(daemon.query("SELECT * FROM messages WHERE ticket_id = 1")) == 2
