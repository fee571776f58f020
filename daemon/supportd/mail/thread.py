"""Thread: which ticket an incoming mail belongs to, strongest signal first (pure).

1. a verified reply token in a recipient address;
2. In-Reply-To / References naming a Message-ID supportd stored or sent;
3. the subject tag `[Prefix #N]`, only from someone already on ticket N, so a stranger
   cannot write into another's ticket by guessing its number;
4. otherwise a new ticket.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from supportd.mail.parse import ParsedMail


@dataclass(frozen=True)
class ThreadFacts:
    """What the store knows about the signals in one mail, looked up by the caller."""

    token_ticket: int | None
    tickets_by_message_id: Mapping[str, int]
    tagged_ticket_people: frozenset[str]  # requester, cc and agents of the subject-tag ticket


@dataclass(frozen=True)
class ThreadResult:
    ticket_id: int | None  # None: open a new ticket
    via: str


def referenced_ids(mail: ParsedMail) -> tuple[str, ...]:
    """Message-IDs the mail answers, most direct first: In-Reply-To, then newest References."""
    ordered = dict.fromkeys((*mail.in_reply_to, *reversed(mail.references)))
    return tuple(ordered)


def subject_tag(subject: str, prefix: str) -> int | None:
    """The ticket number of a `[Prefix #N]` tag anywhere in the subject (case-insensitive)."""
    match = re.search(rf"\[{re.escape(prefix)} #(\d{{1,12}})\]", subject, re.IGNORECASE)
    return int(match[1]) if match else None


def thread_message(mail: ParsedMail, sender: str, facts: ThreadFacts, prefix: str) -> ThreadResult:
    if facts.token_ticket is not None:
        return ThreadResult(facts.token_ticket, "reply token")
    for message_id in referenced_ids(mail):
        if message_id in facts.tickets_by_message_id:
            return ThreadResult(facts.tickets_by_message_id[message_id], "In-Reply-To/References")
    tagged = subject_tag(mail.subject, prefix)
    if tagged is not None and sender in facts.tagged_ticket_people:
        return ThreadResult(tagged, "subject tag")
    return ThreadResult(None, "new ticket")
