"""Auth: reply tokens and trusted Authentication-Results decide who wrote a mail."""

from __future__ import annotations

import email
import email.policy
import email.utils
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supportd.mail.auth import (
    TokenMatch,
    authenticated_domains,
    make_token,
    sender_is_authenticated,
    token_address,
    token_for_address,
    token_in_address,
    verify_token,
)

SECRET = b"test secret, 32 bytes long......"
AGENTS = ("alice@example.com", "bob@example.com")
SUPPORT = frozenset({"support@example.com", "help@example.org"})
OUR_MX = frozenset({"mail.example.org"})
GOOGLE = frozenset({"mx.google.com"})

# Real-world headers, unfolded as ParsedMail.headers gives them (b= values shortened).
GMAIL = (
    "mx.google.com; dkim=pass header.i=@example.com header.s=20230601 header.b=Xy7Qm1Zb; "
    "spf=pass (google.com: domain of alice@example.com designates 209.85.220.41 as permitted "
    "sender) smtp.mailfrom=alice@example.com; "
    "dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.com"
)
GMAIL_VIA_ESP = (
    "mx.google.com; dkim=pass header.i=@sendgrid.net header.s=smtpapi header.b=kC2a9Qz1; "
    "spf=pass (google.com: domain of bounces+1234-abcd-alice=example.com@sendgrid.net "
    "designates 167.89.0.1 as permitted sender) "
    'smtp.mailfrom="bounces+1234-abcd-alice=example.com@sendgrid.net"; '
    "dmarc=fail (p=NONE sp=NONE dis=NONE) header.from=example.com"
)
MICROSOFT_365 = (
    "spf=pass (sender IP is 209.85.218.43) smtp.mailfrom=example.com; dkim=pass (signature "
    "was verified) header.d=example.com;dmarc=pass action=none "
    "header.from=example.com;compauth=pass reason=100"
)
OPENDKIM = (
    "mail.example.org; dkim=pass (2048-bit key; unprotected) header.d=example.com "
    'header.i=@example.com header.a=rsa-sha256 header.s=mail header.b="Ab1+2/c="; '
    "dkim-atps=neutral"
)
OPENDMARC = "mail.example.org; dmarc=pass (p=reject dis=none) header.from=example.com"
# From the corpus (flanker iphone.eml): Gmail's note that the signature had t=y.
GMAIL_TEST_MODE = (
    "mx.google.com; spf=pass (google.com: domain of someone@somewhere.com designates "
    "74.125.83.176 as permitted sender) smtp.mail=someone@somewhere.com; "
    "dkim=pass (test mode) header.i=@gmail.com"
)


def ar(value: str) -> tuple[str, str]:
    return ("authentication-results", value)


# --- reply tokens -------------------------------------------------------------------------


def test_customer_token_verifies_to_its_ticket_without_agent() -> None:
    token = make_token(SECRET, 42)
    assert verify_token(SECRET, token, AGENTS) == TokenMatch(ticket_id=42, agent=None)


def test_agent_token_verifies_to_its_ticket_and_agent() -> None:
    token = make_token(SECRET, 42, "bob@example.com")
    assert verify_token(SECRET, token, AGENTS) == TokenMatch(ticket_id=42, agent="bob@example.com")


def test_token_is_ticket_id_and_sixteen_lower_case_hex_chars() -> None:
    ticket, _, digest = make_token(SECRET, 42, "alice@example.com").partition("-")
    assert ticket == "42"
    assert len(digest) == 16
    assert digest == digest.lower()
    int(digest, 16)


def test_agent_address_case_does_not_change_its_token() -> None:
    assert make_token(SECRET, 7, "Alice@Example.COM") == make_token(SECRET, 7, "alice@example.com")


def test_customer_and_agent_tokens_differ() -> None:
    assert make_token(SECRET, 42) != make_token(SECRET, 42, "alice@example.com")


def test_token_for_ticket_42_does_not_verify_for_43() -> None:
    digest = make_token(SECRET, 42).partition("-")[2]
    assert verify_token(SECRET, f"43-{digest}", AGENTS) is None


def test_alices_token_does_not_verify_as_bobs() -> None:
    token = make_token(SECRET, 42, "alice@example.com")
    assert verify_token(SECRET, token, ["bob@example.com"]) is None


def test_agent_token_of_agent_no_longer_on_roster_does_not_verify() -> None:
    token = make_token(SECRET, 42, "carol@example.com")
    assert verify_token(SECRET, token, AGENTS) is None


def test_token_made_with_another_secret_does_not_verify() -> None:
    assert verify_token(SECRET, make_token(b"another secret", 42), AGENTS) is None


def test_tampered_token_does_not_verify() -> None:
    token = make_token(SECRET, 42)
    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert verify_token(SECRET, flipped, AGENTS) is None


@pytest.mark.parametrize(
    "garble",
    [
        pytest.param(lambda t: t[:-1], id="truncated"),
        pytest.param(lambda t: t + "0", id="extended"),
        pytest.param(str.upper, id="upper-case"),
        pytest.param(lambda t: "0" + t, id="leading-zero"),
        pytest.param(lambda t: t.replace("-", ""), id="no-dash"),
        pytest.param(lambda t: " " + t, id="space"),
        pytest.param(lambda t: "-" + t, id="negative"),
    ],
)
def test_garbled_token_does_not_verify(garble: Callable[[str], str]) -> None:
    token = make_token(SECRET, 42)
    garbled = garble(token)
    assert garbled != token
    assert verify_token(SECRET, garbled, AGENTS) is None


@pytest.mark.parametrize("garbage", ["", "-", "42", "42-", "abc-def", "42-zzzzzzzzzzzzzzzz", "🙂"])
def test_garbage_token_does_not_verify(garbage: str) -> None:
    assert verify_token(SECRET, garbage, AGENTS) is None


def test_make_token_refuses_ticket_ids_below_one() -> None:
    with pytest.raises(ValueError, match="ticket id"):
        make_token(SECRET, 0)


@given(ticket_id=st.integers(min_value=1, max_value=10**15), agent_index=st.integers(0, 2))
def test_every_token_round_trips(ticket_id: int, agent_index: int) -> None:
    agent = AGENTS[agent_index] if agent_index < len(AGENTS) else None
    token = make_token(SECRET, ticket_id, agent)
    assert verify_token(SECRET, token, AGENTS) == TokenMatch(ticket_id=ticket_id, agent=agent)


# --- token addresses ----------------------------------------------------------------------


def test_token_address_plus_addresses_the_support_address() -> None:
    assert token_address("support@example.com", "42-0123456789abcdef") == (
        "support+42-0123456789abcdef@example.com"
    )


def test_token_address_refuses_an_address_without_domain() -> None:
    with pytest.raises(ValueError, match="local@domain"):
        token_address("support", "42-0123456789abcdef")


@pytest.mark.parametrize("support", sorted(SUPPORT))
def test_token_is_found_in_each_configured_support_address(support: str) -> None:
    token = make_token(SECRET, 42)
    assert token_in_address(token_address(support, token), SUPPORT) == token


def test_support_address_is_matched_case_insensitively() -> None:
    assert token_in_address("Support+42-0123456789abcdef@EXAMPLE.com", SUPPORT) == (
        "42-0123456789abcdef"
    )


@pytest.mark.parametrize(
    "address",
    [
        "support+42-0123456789abcdef@example.net",  # unknown domain
        "support+42-0123456789abcdef@mail.example.com",  # subdomain is another domain
        "sales+42-0123456789abcdef@example.com",  # another local part
        "xsupport+42-0123456789abcdef@example.com",
        "support@example.com",  # no token
        "support+@example.com",  # empty token
        "support+42-0123456789abcdef",  # no domain
    ],
)
def test_no_token_in_other_addresses(address: str) -> None:
    assert token_in_address(address, SUPPORT) is None


def test_longest_configured_support_address_wins() -> None:
    # Several domains, so a set's iteration order cannot make this pass by luck.
    for domain in (f"site{n}.example" for n in range(16)):
        support = frozenset({f"help@{domain}", f"help+vip@{domain}"})
        address = f"help+vip+42-0123456789abcdef@{domain}"
        assert token_in_address(address, support) == "42-0123456789abcdef"


def test_token_from_address_verifies() -> None:
    token = make_token(SECRET, 9, "alice@example.com")
    found = token_in_address(token_address("help@example.org", token), SUPPORT)
    assert found is not None
    assert verify_token(SECRET, found, AGENTS) == TokenMatch(9, "alice@example.com")


# --- Authentication-Results ---------------------------------------------------------------


def test_aligned_dkim_pass_from_trusted_server_authenticates() -> None:
    headers = [ar("mail.example.org; dkim=pass header.d=example.com")]
    assert sender_is_authenticated("alice@example.com", headers, OUR_MX)


def test_aligned_header_i_domain_authenticates() -> None:
    headers = [ar("mail.example.org; dkim=pass header.i=alice@example.com")]
    assert sender_is_authenticated("alice@example.com", headers, OUR_MX)


def test_dkim_pass_for_another_domain_does_not_authenticate() -> None:
    headers = [ar("mail.example.org; dkim=pass header.d=gmail.com")]
    assert not sender_is_authenticated("alice@example.com", headers, OUR_MX)


def test_dkim_pass_for_parent_domain_does_not_authenticate_a_subdomain() -> None:
    headers = [ar("mail.example.org; dkim=pass header.d=example.com")]
    assert not sender_is_authenticated("alice@eu.example.com", headers, OUR_MX)


def test_aligned_dmarc_pass_authenticates() -> None:
    assert sender_is_authenticated("alice@example.com", [ar(OPENDMARC)], OUR_MX)


@pytest.mark.parametrize("result", ["fail", "neutral", "none", "policy", "temperror", "permerror"])
def test_dkim_other_than_pass_does_not_authenticate(result: str) -> None:
    headers = [ar(f"mail.example.org; dkim={result} header.d=example.com")]
    assert not sender_is_authenticated("alice@example.com", headers, OUR_MX)


def test_spf_pass_alone_does_not_authenticate() -> None:
    headers = [ar("mail.example.org; spf=pass smtp.mailfrom=alice@example.com")]
    assert not sender_is_authenticated("alice@example.com", headers, OUR_MX)


def test_header_from_untrusted_server_is_ignored() -> None:
    headers = [ar("mx.attacker.test; dkim=pass header.d=example.com")]
    assert not sender_is_authenticated("alice@example.com", headers, OUR_MX)


def test_no_trusted_servers_means_no_header_is_believed() -> None:
    assert not sender_is_authenticated("alice@example.com", [ar(OPENDKIM)], frozenset())


def test_forged_header_among_several_does_not_authenticate() -> None:
    headers = [
        ar("mail.example.org; dkim=fail (bad signature) header.d=example.com"),
        ar("mx.attacker.test; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"),
        ar("mail.example.org.attacker.test; dkim=pass header.d=example.com"),
        ("x-authentication-results", "mail.example.org; dkim=pass header.d=example.com"),
    ]
    assert not sender_is_authenticated("alice@example.com", headers, OUR_MX)


def test_trusted_header_among_forged_ones_authenticates() -> None:
    headers = [
        ar("mx.attacker.test; dkim=pass header.d=evil.test"),
        ar(OPENDKIM),
        ar("mail.example.org; none"),
    ]
    assert authenticated_domains(headers, OUR_MX) == frozenset({"example.com"})


RECEIVED = ("received", "from mail.example.net (mail.example.net [192.0.2.7]) by "
            "mail.example.org (Postfix) with ESMTPS id 4Xy1; Mon, 30 Nov 2026 10:00:00 +0000")


def test_only_headers_above_the_first_received_count() -> None:
    """Finding 2: the MTA stamps its result on top as it takes the mail in; a header below
    its Received: was in the mail before, written by the sender, even with our id."""
    forged = ar("mail.example.org; dkim=pass header.d=evil.test")
    headers = [ar(OPENDKIM), ("x-spam", "no"), RECEIVED, forged, ("received", "by evil")]
    assert authenticated_domains(headers, OUR_MX) == frozenset({"example.com"})
    assert not sender_is_authenticated("mallory@evil.test", headers, OUR_MX)


def test_header_below_the_first_received_alone_authenticates_nobody() -> None:
    headers = [("Received", RECEIVED[1]), ar(OPENDKIM)]
    assert authenticated_domains(headers, OUR_MX) == frozenset()
    assert not sender_is_authenticated("alice@example.com", headers, OUR_MX)


def test_authserv_id_and_domains_compare_case_insensitively() -> None:
    headers = [ar("Mail.Example.ORG; DKIM=Pass header.d=Example.COM.")]
    assert sender_is_authenticated("Alice@example.com", headers, frozenset({"MAIL.example.org"}))


def test_version_after_authserv_id_is_allowed() -> None:
    headers = [ar("mail.example.org 1; dkim=pass header.d=example.com")]
    assert authenticated_domains(headers, OUR_MX) == frozenset({"example.com"})


def test_comments_and_quoted_strings_do_not_split_or_fake_results() -> None:
    value = (
        '(our mx) mail.example.org; dkim=pass reason="sig; dmarc=pass header.from=evil.test" '
        "(nested (dkim=pass header.d=evil.test) comment; really) header.d=example.com"
    )
    assert authenticated_domains([ar(value)], OUR_MX) == frozenset({"example.com"})


def test_none_means_no_results() -> None:
    assert authenticated_domains([ar("mail.example.org 1; none")], OUR_MX) == frozenset()


def test_unterminated_comment_and_trailing_semicolon_are_tolerated() -> None:
    headers = [ar("mail.example.org; dkim=pass header.d=example.com; spf=pass (unterminated")]
    assert authenticated_domains(headers, OUR_MX) == frozenset({"example.com"})


def test_internationalised_domain_matches_its_a_label() -> None:
    headers = [ar("mail.example.org; dkim=pass header.d=xn--bcher-kva.example")]
    assert sender_is_authenticated("anna@bücher.example", headers, OUR_MX)


def test_dkim_pass_in_test_mode_does_not_authenticate() -> None:
    assert not sender_is_authenticated("someone@gmail.com", [ar(GMAIL_TEST_MODE)], GOOGLE)


def test_gmail_header_authenticates_aligned_sender() -> None:
    assert authenticated_domains([ar(GMAIL)], GOOGLE) == frozenset({"example.com"})
    assert sender_is_authenticated("alice@example.com", [ar(GMAIL)], GOOGLE)


def test_gmail_header_for_mail_signed_only_by_an_esp_does_not_authenticate() -> None:
    assert authenticated_domains([ar(GMAIL_VIA_ESP)], GOOGLE) == frozenset({"sendgrid.net"})
    assert not sender_is_authenticated("alice@example.com", [ar(GMAIL_VIA_ESP)], GOOGLE)


def test_microsoft_365_header_has_no_authserv_id_so_is_never_trusted() -> None:
    everyone = frozenset({"example.com", "spf", "outlook.com", "mx.microsoft.com"})
    assert authenticated_domains([ar(MICROSOFT_365)], everyone) == frozenset()


def test_opendkim_header_authenticates_aligned_sender() -> None:
    assert sender_is_authenticated("alice@example.com", [ar(OPENDKIM)], OUR_MX)
    assert not sender_is_authenticated("alice@example.net", [ar(OPENDKIM)], OUR_MX)


def test_from_without_domain_is_not_authenticated() -> None:
    assert not sender_is_authenticated("alice", [ar(OPENDKIM)], OUR_MX)


@given(st.text())
def test_any_header_text_parses_without_raising(value: str) -> None:
    domains = authenticated_domains([ar(value)], OUR_MX)
    assert all(domain == domain.lower() for domain in domains)


# --- real-world corpora -------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusHeader:
    path: Path
    from_email: str
    value: str  # unfolded, as ParsedMail.headers gives it

    @property
    def first_word(self) -> str:
        """The authserv-id, when the header has one."""
        return self.value.partition(";")[0].split(" ")[0].lower()


@pytest.fixture(scope="module")
def corpus_headers(corpora: Path) -> list[CorpusHeader]:
    """Every Authentication-Results header in the corpora, with its mail's From address."""
    found = []
    for path in sorted(corpora.rglob("*.eml")):
        raw = path.read_bytes()
        if b"Authentication-Results" not in raw:
            continue
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        from_email = email.utils.parseaddr(str(message.get("From", "")))[1].lower()
        for value in message.get_all("Authentication-Results") or []:
            found.append(CorpusHeader(path, from_email, " ".join(str(value).split())))
    return found


def test_corpus_headers_are_ignored_unless_their_server_is_trusted(
    corpus_headers: list[CorpusHeader],
) -> None:
    assert len(corpus_headers) > 50
    for header in corpus_headers:
        headers = [ar(header.value)]
        assert not sender_is_authenticated(header.from_email, headers, frozenset()), header.path


def test_corpus_domains_come_from_the_header_text(corpus_headers: list[CorpusHeader]) -> None:
    for header in corpus_headers:
        trusted = frozenset({header.first_word})
        for domain in authenticated_domains([ar(header.value)], trusted):
            assert domain in header.value.lower(), header.path


@pytest.mark.parametrize(
    ("name", "authenticated"),
    [
        ("rfc3464-57.eml", True),  # Gmail: dkim and dmarc pass for googlemail.com
        ("lhost-googleworkspace-01.eml", True),  # Gmail: dkim=pass first, spf=none
        ("enclosed.eml", True),  # Gmail: dkim=pass header.i=@example.net
        ("multi-received-headers.eml", True),  # header.i with a local part
        ("iphone.eml", False),  # dkim=pass (test mode) for another domain
        ("bilingual-simple.eml", False),  # test mode
        ("lhost-amazonses-09.eml", False),  # dkim=neutral, sender-id only
        ("lhost-office365-05.eml", False),  # Microsoft: no authserv-id
        ("lhost-yahoo-04.eml", False),  # pre-RFC Yahoo form without header.d
    ],
)
def test_corpus_mail_authenticated_by_its_own_receiving_server(
    corpus_headers: list[CorpusHeader], name: str, authenticated: bool
) -> None:
    mine = [header for header in corpus_headers if header.path.name == name]
    assert mine, f"{name} not found in the corpora"
    trusted = frozenset(header.first_word for header in mine)
    headers = [ar(header.value) for header in mine]
    assert sender_is_authenticated(mine[0].from_email, headers, trusted) is authenticated


def test_token_for_address_verifies_the_token_it_finds() -> None:
    address = token_address("support@example.com", make_token(SECRET, 42, "bob@example.com"))
    assert token_for_address(address, SUPPORT, SECRET, AGENTS) == TokenMatch(42, "bob@example.com")
    forged = token_address("support@example.com", "42-0123456789abcdef")
    assert token_for_address(forged, SUPPORT, SECRET, AGENTS) is None
    assert token_for_address("support@example.com", SUPPORT, SECRET, AGENTS) is None


def test_token_for_address_reads_an_upper_cased_token() -> None:
    """Finding 11: RCPT and processing both ask token_for_address, whatever the case."""
    address = token_address("support@example.com", make_token(SECRET, 42, "bob@example.com"))
    assert token_for_address(address.upper(), SUPPORT, SECRET, AGENTS) == TokenMatch(
        42, "bob@example.com")
