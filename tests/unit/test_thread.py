"""Threading: token, then headers, then the subject tag from people on the ticket."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest

from supportd.mail.parse import ParsedMail, parse_mail
from supportd.mail.thread import ThreadFacts, referenced_ids, subject_tag, thread_message


def parsed(headers: str) -> ParsedMail:
    return parse_mail((headers + "\n\nbody\n").encode())


NO_FACTS = ThreadFacts(token_ticket=None, tickets_by_message_id={},
                       tagged_ticket_people=frozenset())


def test_token_wins_over_headers_and_tag() -> None:
    mail = parsed("Subject: [Support #9] x\nIn-Reply-To: <a@x>")
    facts = ThreadFacts(token_ticket=3, tickets_by_message_id={"a@x": 5},
                        tagged_ticket_people=frozenset({"c@x"}))
    assert thread_message(mail, "c@x", facts, "Support").ticket_id == 3


def test_in_reply_to_before_references_newest_first() -> None:
    mail = parsed("In-Reply-To: <c@x>\nReferences: <a@x> <b@x>")
    assert referenced_ids(mail) == ("c@x", "b@x", "a@x")
    facts = ThreadFacts(None, {"a@x": 1, "b@x": 2}, frozenset())
    assert thread_message(mail, "c@x", facts, "Support").ticket_id == 2


def test_subject_tag_only_from_someone_on_the_ticket() -> None:
    mail = parsed("Subject: Re: [support #12] printer")
    people = ThreadFacts(None, {}, frozenset({"carol@x"}))
    assert thread_message(mail, "carol@x", people, "Support").ticket_id == 12
    assert thread_message(mail, "mallory@x", people, "Support").ticket_id is None


def test_subject_tag_needs_our_prefix() -> None:
    assert subject_tag("[Support #7] a", "Support") == 7
    assert subject_tag("[Sales #7] a", "Support") is None
    assert subject_tag("Support #7", "Support") is None


def test_nothing_known_means_a_new_ticket() -> None:
    result = thread_message(parsed("Subject: hello"), "c@x", NO_FACTS, "Support")
    assert (result.ticket_id, result.via) == (None, "new ticket")


NEW, REPLY = "new ticket", "In-Reply-To/References"


def _tickets_in_order(messages: list[ParsedMail]) -> list[tuple[int, str]]:
    """(ticket, why) per message, processed in order with a store's memory of Message-IDs:
    a new ticket takes the next number, and an id stays with the first ticket that had it."""
    tickets_by_id: dict[str, int] = {}
    result: list[tuple[int, str]] = []
    opened = 0
    for mail in messages:
        found = thread_message(mail, "x@y", ThreadFacts(None, dict(tickets_by_id), frozenset()),
                               "Support")
        if found.ticket_id is None:
            opened += 1
        ticket = found.ticket_id or opened
        if mail.message_id:
            tickets_by_id.setdefault(mail.message_id, ticket)
        result.append((ticket, found.via))
    return result


@pytest.mark.parametrize(("name", "expected"), [
    # b names a (and c, not seen yet), c names b: the reference loop is one ticket, and ends.
    ("thread.mbox", [(1, NEW), (1, REPLY), (1, REPLY)]),
    # The same Message-ID twice and nothing referenced: a reused id is not a reply.
    ("thread2.mbox", [(1, NEW), (2, NEW)]),
    # "Re: foo" with neither references nor our tag: never threaded by the subject alone.
    ("thread3.mbox", [(1, NEW), (2, NEW)]),
    # A reply to a parent never seen (<c@b>; <a@b> for two mails without an id): nothing to join.
    ("thread4.mbox", [(1, NEW), (2, NEW)]),
    ("thread6.mbox", [(1, NEW), (2, NEW)]),
    # An In-Reply-To tree: every reply, however deep, joins the first mail's ticket.
    ("thread5.mbox", [(1, NEW), (1, REPLY), (1, REPLY), (1, REPLY), (1, REPLY)]),
    # A duplicate Message-ID inside a thread joins by what it references, like the first.
    ("thread7.mbox", [(1, NEW), (1, REPLY), (1, REPLY), (1, REPLY)]),
])
def test_imaptest_threads_become_tickets_by_what_they_reference(
        corpora: Path, name: str, expected: list[tuple[int, str]]) -> None:
    box = mailbox.mbox(corpora / "imaptest-thread" / "src" / "tests" / name, create=False)
    assert _tickets_in_order([parse_mail(m.as_bytes()) for m in box]) == expected
