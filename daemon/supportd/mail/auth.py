"""Auth: who wrote this mail — reply tokens and trusted Authentication-Results (pure, no I/O).

Two proofs make an agent's mail count as the agent's (ARCHITECTURE.md, "Who is an agent"):
an agent-specific reply token in a recipient address, or a DKIM/DMARC pass aligned with the
From domain in an `Authentication-Results` header (RFC 8601) stamped by a trusted MTA, on
top of a mail that came through a listener behind that MTA.

Authentication-Results is parsed by hand, not with the `authres` package: authres 1.2.0
(last release 2019, untyped) raises on the trailing `;` that Microsoft 365 and others
write, and one malformed clause makes it discard the whole header. Only three methods and
four properties matter here, so a small tolerant tokenizer (comments, quoted strings,
`;`-separated clauses) is less code to trust than a wrapper around those failures.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_DIGEST_HEX_CHARS = 16
# Canonical form only: no leading zeros, lower-case hex, so each token has one spelling.
_TOKEN = re.compile(r"([1-9][0-9]{0,17})-([0-9a-f]{16})")


@dataclass(frozen=True)
class TokenMatch:
    ticket_id: int
    agent: str | None  # the agent's address for an agent-specific token, else None


def make_token(secret: bytes, ticket_id: int, agent: str | None = None) -> str:
    """The token for `ticket_id`, agent-specific when `agent` is given: "42-3f9a0c1b2d4e5f60"."""
    if ticket_id < 1:
        raise ValueError(f"reply tokens name a ticket id of 1 or more, not {ticket_id}")
    return f"{ticket_id}-{_digest(secret, ticket_id, agent)}"


def token_address(support_address: str, token: str) -> str:
    """`support@example.com` with `token` plus-addressed onto its local part."""
    local, at, domain = support_address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"support address {support_address!r} is not of the form local@domain")
    return f"{local}+{token}@{domain}"


def token_in_address(address: str, support_addresses: frozenset[str]) -> str | None:
    """The token part of `address` if it is support+TOKEN@domain for a configured support address.

    The support address is compared case-insensitively (RFC 5321 §2.4: domains are, and
    senders should not rely on local-part case); the token is returned as written.
    """
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return None
    # Longest first, so "help+vip@" wins over "help@" when both are configured.
    for support in sorted(support_addresses, key=len, reverse=True):
        support_local, _, support_domain = support.strip().lower().rpartition("@")
        prefix = f"{support_local}+"
        if domain.lower() == support_domain and local.lower().startswith(prefix):
            token = local[len(prefix) :]
            return token or None
    return None


def verify_token(secret: bytes, token: str, agents: Iterable[str]) -> TokenMatch | None:
    """The ticket (and agent) `token` was made for, or None if it is forged or garbled."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    ticket_id = int(match.group(1))
    presented = match.group(2)
    if hmac.compare_digest(presented, _digest(secret, ticket_id, None)):
        return TokenMatch(ticket_id=ticket_id, agent=None)
    for agent in agents:
        if hmac.compare_digest(presented, _digest(secret, ticket_id, agent)):
            return TokenMatch(ticket_id=ticket_id, agent=agent)
    return None


def token_for_address(
    address: str, support_addresses: frozenset[str], secret: bytes, agents: Iterable[str]
) -> TokenMatch | None:
    """The verified token in a support+TOKEN@ address, or None (no token, or a forged one).

    The one comparison of an address's token, at RCPT and in processing alike. The token is
    made in lower case; a mail system that changes the case of the local part (RFC 5321
    §2.4 lets it only at its own risk) still names the same ticket.
    """
    token = token_in_address(address, support_addresses)
    return verify_token(secret, token.lower(), agents) if token is not None else None


def _digest(secret: bytes, ticket_id: int, agent: str | None) -> str:
    # The newline-separated fields keep the customer and each agent's message distinct.
    subject = f"supportd reply token\n{ticket_id}\n{'' if agent is None else agent.strip().lower()}"
    mac = hmac.new(secret, subject.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:_DIGEST_HEX_CHARS]


def authenticated_domains(
    headers: Iterable[tuple[str, str]], trusted_authserv_ids: frozenset[str]
) -> frozenset[str]:
    """Domains (lower-cased) with a DKIM or DMARC pass in trusted Authentication-Results headers.

    Only the topmost headers count, those above the first Received: (RFC 8601 §5): the
    trusted MTA puts its own on top as it takes the mail in, so any below it were in the
    mail before, written by the sender or an earlier hop. The caller decides whether the
    mail came through that MTA at all (`Config.trusts_authentication_results`).
    DKIM counts `header.d` and the domain of `header.i`; DMARC counts `header.from`.
    """
    trusted = {authserv_id.lower() for authserv_id in trusted_authserv_ids}
    domains: set[str] = set()
    for name, value in headers:
        name = name.lower()
        if name == "received":
            break
        if name != "authentication-results":
            continue
        parsed = _parse_authentication_results(value)
        # RFC 8601 §5: the border MTA removes headers carrying its own authserv-id, so only
        # ours can be believed; any other id may have been written by the sender.
        if parsed is None or parsed.authserv_id not in trusted:
            continue
        for result in parsed.results:
            domains.update(_passed_domains(result))
    return frozenset(domains)


def sender_is_authenticated(
    from_email: str, headers: Iterable[tuple[str, str]], trusted_authserv_ids: frozenset[str]
) -> bool:
    """True if a trusted Authentication-Results header on top vouches for the From domain."""
    _, at, domain = from_email.strip().rpartition("@")
    if not at or not domain:
        return False
    return _normalise_domain(domain) in authenticated_domains(headers, trusted_authserv_ids)


@dataclass(frozen=True)
class _Result:
    method: str  # lower-cased, version stripped: "dkim"
    result: str  # lower-cased: "pass"
    properties: tuple[tuple[str, str], ...]  # (lower-cased "ptype.property", value)
    comments: tuple[str, ...]

    def values(self, name: str) -> Iterator[str]:
        return (value for key, value in self.properties if key == name)


@dataclass(frozen=True)
class _AuthenticationResults:
    authserv_id: str  # lower-cased
    results: tuple[_Result, ...]


@dataclass(frozen=True)
class _Clause:
    words: tuple[str, ...]  # bare words, quoted-string contents, and "=" as its own word
    comments: tuple[str, ...]


def _passed_domains(result: _Result) -> Iterator[str]:
    if result.result != "pass":
        return
    if result.method == "dkim" and not _is_test_mode(result):
        yield from (_normalise_domain(value) for value in result.values("header.d"))
        yield from (_normalise_domain(value) for value in result.values("header.i"))
    elif result.method == "dmarc":
        yield from (_normalise_domain(value) for value in result.values("header.from"))


def _is_test_mode(result: _Result) -> bool:
    # RFC 6376 §3.5 (t=y): verifiers must treat a testing-mode signature like no signature.
    return any("test mode" in comment.lower() for comment in result.comments)


def _normalise_domain(value: str) -> str:
    """The domain of `value` ("@example.com", "a@example.com" or "example.com"), as an A-label."""
    domain = value.rpartition("@")[2].strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _parse_authentication_results(value: str) -> _AuthenticationResults | None:
    """The authserv-id and results of one header value; None when it names no authserv-id."""
    clauses = _split_clauses(value)
    if not clauses:
        return None
    head = clauses[0].words
    # RFC 8601 §2.2: the value starts with the authserv-id (and an optional version);
    # Microsoft 365 omits it and starts with "spf=...", so nothing can vouch for it.
    if not head or head[0] == "=" or head[1:2] == ("=",):
        return None
    results = (_result(clause) for clause in clauses[1:])
    return _AuthenticationResults(
        authserv_id=head[0].lower(),
        results=tuple(result for result in results if result is not None),
    )


def _result(clause: _Clause) -> _Result | None:
    """One `method=result ptype.property=value ...` clause; None for "none" or garbage."""
    pairs = _pairs(clause.words)
    if not pairs:
        return None
    method, result = pairs[0]
    return _Result(
        method=method.partition("/")[0].lower(),
        result=result.lower(),
        properties=tuple((key.lower(), value) for key, value in pairs[1:]),
        comments=clause.comments,
    )


def _pairs(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """The `key=value` pairs among `words`, skipping whatever does not fit that shape."""
    pairs: list[tuple[str, str]] = []
    index = 0
    while index + 2 < len(words):
        key, equals, value = words[index : index + 3]
        if key != "=" and equals == "=" and value != "=":
            pairs.append((key, value))
            index += 3
        else:
            index += 1
    return pairs


def _split_clauses(value: str) -> list[_Clause]:
    """Split at `;` outside comments and quoted strings (RFC 8601 §2.2, RFC 5322 §3.2)."""
    clauses: list[_Clause] = []
    words: list[str] = []
    comments: list[str] = []
    word: list[str] = []

    def end_word() -> None:
        if word:
            words.append("".join(word))
            word.clear()

    index = 0
    while index < len(value):
        char = value[index]
        if char == "(":
            end_word()
            comment, index = _read_delimited(value, index, ")")
            comments.append(comment)
            continue
        if char == '"':
            end_word()
            quoted, index = _read_delimited(value, index, '"')
            words.append(quoted)
            continue
        if char == ";":
            end_word()
            clauses.append(_Clause(words=tuple(words), comments=tuple(comments)))
            words.clear()
            comments.clear()
        elif char == "=":
            end_word()
            words.append("=")
        elif char.isspace():
            end_word()
        else:
            word.append(char)
        index += 1
    end_word()
    if words or comments:
        clauses.append(_Clause(words=tuple(words), comments=tuple(comments)))
    return clauses


def _read_delimited(value: str, start: int, close: str) -> tuple[str, int]:
    """The text of the comment or quoted string opening at `start`, and the index after it.

    Comments nest and both honour backslash quoted-pairs (RFC 5322 §3.2.2, §3.2.4); an
    unterminated one runs to the end of the value.
    """
    opener = value[start]
    depth = 1
    text: list[str] = []
    index = start + 1
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            text.append(value[index + 1])
            index += 2
            continue
        if char == close:
            depth -= 1
            if depth == 0:
                return "".join(text), index + 1
        elif char == opener and opener != close:
            depth += 1
        text.append(char)
        index += 1
    return "".join(text), index
