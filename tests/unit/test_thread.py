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


def _threads_by_signal(messages: list[ParsedMail]) -> list[int]:
    """Ticket per message when every message is processed in order, as supportd would."""
    tickets_by_id: dict[str, int] = {}
    result = []
    for i, mail in enumerate(messages):
        facts = ThreadFacts(None, dict(tickets_by_id), frozenset())
        ticket = thread_message(mail, "x@y", facts, "Support").ticket_id or (i + 1)
        if mail.message_id:
            tickets_by_id.setdefault(mail.message_id, ticket)
        result.append(ticket)
    return result


@pytest.mark.parametrize("name", ["thread.mbox", "thread2.mbox", "thread3.mbox"])
def test_imaptest_reference_loops_and_duplicate_ids_do_not_hang(corpora: Path, name: str) -> None:
    box = mailbox.mbox(corpora / "imaptest-thread" / "src" / "tests" / name, create=False)
    messages = [parse_mail(m.as_bytes()) for m in box]
    tickets = _threads_by_signal(messages)
    assert len(tickets) == len(messages)
    # A reply always lands in a ticket that an earlier message opened.
    assert all(t <= i + 1 for i, t in enumerate(tickets))
