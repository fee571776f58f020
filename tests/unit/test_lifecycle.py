"""The ticket state machine refuses illegal moves and reopens on customer replies."""

from __future__ import annotations

import pytest

from supportd.tickets.lifecycle import (
    IllegalMove,
    after_agent_reply,
    after_customer_reply,
    check_move,
)
from supportd.tickets.model import Status


@pytest.mark.parametrize(("current", "wanted"), [
    (Status.NEW, Status.OPEN), (Status.NEW, Status.SOLVED), (Status.OPEN, Status.PENDING),
    (Status.PENDING, Status.OPEN), (Status.SOLVED, Status.OPEN), (Status.SOLVED, Status.CLOSED),
    (Status.PENDING, Status.PENDING),
])
def test_legal_moves(current: Status, wanted: Status) -> None:
    check_move(current, wanted)


@pytest.mark.parametrize(("current", "wanted"), [
    (Status.CLOSED, Status.OPEN), (Status.OPEN, Status.NEW), (Status.NEW, Status.CLOSED),
    (Status.PENDING, Status.CLOSED),
])
def test_illegal_moves_are_refused_with_what_is_allowed(current: Status, wanted: Status) -> None:
    with pytest.raises(IllegalMove, match="allowed"):
        check_move(current, wanted)


def test_reply_to_pending_or_solved_ticket_reopens_it() -> None:
    assert after_customer_reply(Status.PENDING) == Status.OPEN
    assert after_customer_reply(Status.SOLVED) == Status.OPEN
    assert after_customer_reply(Status.NEW) == Status.NEW


def test_agent_answering_a_new_ticket_opens_it() -> None:
    assert after_agent_reply(Status.NEW) == Status.OPEN
    assert after_agent_reply(Status.PENDING) == Status.PENDING
