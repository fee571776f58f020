"""Addresses: one answer to "is this address ours?" for RCPT, classify and the service."""

from __future__ import annotations

import pytest

from supportd.mail.addresses import Addresses
from supportd.mail.auth import TokenMatch, make_token, token_address

SECRET = b"test secret, 32 bytes long......"
OURS = Addresses(support=frozenset({"support@example.com", "help+vip@example.org"}),
                 hmac_key=SECRET, agents=("alice@example.com",))


@pytest.mark.parametrize("address", [
    "support@example.com", "Support@EXAMPLE.com", " support@example.com ",
    "support+42-0123456789abcdef@example.com",  # a token, forged or not, is still ours
    "support+anything@example.com", "support+@example.com",
    "help+vip@example.org", "help+vip+7-0123456789abcdef@example.org",
])
def test_support_addresses_and_their_plus_addresses_are_ours(address: str) -> None:
    assert OURS.is_ours(address)


@pytest.mark.parametrize("address", [
    "sales@example.com", "support@example.net", "support@mail.example.com",
    "xsupport@example.com", "supportx@example.com", "help@example.org",
    "help+vipx@example.org", "support", "",
])
def test_other_addresses_are_not_ours(address: str) -> None:
    assert not OURS.is_ours(address)


def test_token_is_found_in_any_case() -> None:
    """Finding 11: the token of an upper-cased address is the same token."""
    address = token_address("support@example.com", make_token(SECRET, 42, "alice@example.com"))
    assert OURS.token(address) == OURS.token(address.upper()) == TokenMatch(42, "alice@example.com")


def test_rcpt_accepts_support_addresses_and_valid_tokens_only() -> None:
    token = token_address("help+vip@example.org", make_token(SECRET, 9))
    assert OURS.accepts("SUPPORT@example.com")
    assert OURS.accepts(token) and OURS.accepts(token.upper())
    assert not OURS.accepts("support+9-0123456789abcdef@example.com")  # forged
    assert not OURS.accepts("support+anything@example.com")  # ours, but names no ticket
    assert not OURS.accepts("sales@example.com")
