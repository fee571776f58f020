"""Addresses: supportd's own addresses, the one answer to "is this address ours?" (pure).

Intake's RCPT check, classification (our own mail, X-Loop) and the ticket service ask the
same `Addresses` value, built once per config (`Config.addresses`), so an address that is
ours at RCPT is ours in processing too, in whatever case it was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from supportd.mail.auth import TokenMatch, token_for_address


@dataclass(frozen=True)
class Addresses:
    support: frozenset[str]  # the configured support addresses, lower-case
    hmac_key: bytes = field(repr=False)  # the reply-token key
    agents: tuple[str, ...]  # the agent roster, lower-case: whose personal tokens verify
    _parts: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        split = (address.rpartition("@") for address in self.support)
        object.__setattr__(self, "_parts", tuple((local, domain) for local, _, domain in split))

    def is_ours(self, address: str) -> bool:
        """A support address, or support+anything@ of one (a reply token, valid or not)."""
        local, at, domain = address.strip().lower().rpartition("@")
        return bool(at) and any(
            domain == our_domain and (local == our_local or local.startswith(our_local + "+"))
            for our_local, our_domain in self._parts
        )

    def token(self, address: str) -> TokenMatch | None:
        """The verified reply token in `address`, or None (no token, or a forged one)."""
        return token_for_address(address, self.support, self.hmac_key, self.agents)

    def accepts(self, address: str) -> bool:
        """Whether RCPT takes `address`: a support address or one with a valid reply token."""
        return address.strip().lower() in self.support or self.token(address) is not None
