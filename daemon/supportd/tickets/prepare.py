"""Prepare: one inbox row read into an `Incoming`, outside any transaction (pure).

Everything that costs time and needs nothing from the store happens here, before the write
lock is taken: MIME parsing, HTML to text, who the author is and whether it is proven,
classification, command parsing and quote stripping. `decide` then only looks things up.
"""

from __future__ import annotations

from dataclasses import dataclass

from supportd.config import Config
from supportd.mail.auth import TokenMatch, sender_is_authenticated
from supportd.mail.classify import Decision, classify
from supportd.mail.parse import ParsedMail, is_mailbox, parse_mail
from supportd.mail.reply import strip_quoted_reply
from supportd.mail.thread import referenced_ids, subject_tag
from supportd.store.api import InboxRow
from supportd.tickets.commands import ParsedCommands, parse_commands


@dataclass(frozen=True)
class Incoming:
    """One inbox row, parsed, with what we know about its author."""

    row: InboxRow
    mail: ParsedMail
    sender: str
    answer_to: str  # where automatic answers go: Reply-To if any, else the sender
    token: TokenMatch | None
    is_agent: bool  # an authenticated agent
    unauthenticated_agent: bool  # an agent's address, but not proven
    decision: Decision
    body: str  # the text without the quoted history
    commands: ParsedCommands | None  # an authenticated agent's command lines
    references: tuple[str, ...]  # the Message-IDs it answers, most direct first
    tagged: int | None  # the ticket of a subject tag


def prepare(row: InboxRow, config: Config) -> Incoming:
    mail = parse_mail(row.raw)
    support = config.support
    sender = mail.from_addr.email if mail.from_addr else (row.mail_from or "")
    token = _token(row, mail, config)
    agent_address = sender in config.agent_by_email
    proven = agent_address and (
        (token is not None and token.agent == sender)
        or (config.trusts_authentication_results(row.source)
            and sender_is_authenticated(sender, mail.headers, support.trusted_authserv_ids))
    )
    # RFC 5322 §3.6.2: answers go to Reply-To when there is one (web forms, no-reply robots).
    answer_to = next((a.email for a in mail.reply_to if not config.addresses.is_ours(a.email)),
                     sender)
    decision = classify(mail, envelope_sender=row.mail_from, addresses=config.addresses)
    if decision.answerable and not is_mailbox(answer_to):
        decision = Decision(False, "no_address", f"no address to answer: {answer_to!r}")
    commands = None
    if proven and decision.answerable:
        commands = parse_commands(
            mail.text, sender=sender, agents={a.email: a.name for a in config.agents},
            groups=frozenset(g.name for g in config.groups))
    body = strip_quoted_reply(commands.body if commands is not None else mail.text)
    return Incoming(
        row=row, mail=mail, sender=sender, answer_to=answer_to, token=token, is_agent=proven,
        unauthenticated_agent=agent_address and not proven, decision=decision, body=body,
        commands=commands, references=referenced_ids(mail),
        tagged=subject_tag(mail.subject, support.subject_prefix))


def _token(row: InboxRow, mail: ParsedMail, config: Config) -> TokenMatch | None:
    # The envelope is what we were sent to; the headers matter where there is none (IMAP).
    addresses = [*row.rcpt_to, *(a.email for a in (*mail.to, *mail.cc))]
    return next(filter(None, map(config.addresses.token, addresses)), None)
