"""Lifecycle: the ticket state machine; which status moves are legal (pure)."""

from __future__ import annotations

from supportd.tickets.model import Status

# New -> Open/Pending/Solved; Pending and Solved reopen; only Solved closes; Closed is final
# (a reply to a closed ticket starts a follow-up ticket instead).
MOVES: dict[Status, frozenset[Status]] = {
    Status.NEW: frozenset({Status.OPEN, Status.PENDING, Status.SOLVED}),
    Status.OPEN: frozenset({Status.PENDING, Status.SOLVED}),
    Status.PENDING: frozenset({Status.OPEN, Status.SOLVED}),
    Status.SOLVED: frozenset({Status.OPEN, Status.CLOSED}),
    Status.CLOSED: frozenset(),
}


class IllegalMove(ValueError):
    pass


def check_move(current: Status, wanted: Status) -> None:
    """Raise IllegalMove with a sentence for people unless current -> wanted is allowed."""
    if wanted == current or wanted in MOVES[current]:
        return
    allowed = ", ".join(sorted(MOVES[current])) or "none: the ticket is closed"
    raise IllegalMove(f"a {current} ticket cannot become {wanted} (allowed: {allowed})")


def after_customer_reply(current: Status) -> Status:
    """A customer's reply means we owe an answer: Pending and Solved tickets reopen."""
    return Status.OPEN if current in (Status.PENDING, Status.SOLVED) else current


def after_agent_reply(current: Status) -> Status:
    """An agent answering a New ticket has picked it up: it becomes Open."""
    return Status.OPEN if current == Status.NEW else current
