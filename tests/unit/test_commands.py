"""Agent command lines: parsed strictly, errors quote the line and say what would work."""

from __future__ import annotations

from supportd.tickets.commands import (
    Assign,
    Note,
    SetGroup,
    SetPriority,
    SetStatus,
    parse_commands,
)
from supportd.tickets.model import Priority, Status

AGENTS = {"alice@example.com": "Alice", "bob@example.com": "Bob Stone"}
GROUPS = frozenset({"tier1", "experts"})


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_commands(text, sender="alice@example.com", agents=AGENTS, groups=GROUPS)


def test_command_lines_at_the_top_are_split_from_the_body() -> None:
    result = parse("#status pending\n#priority HIGH\n\nHi Carol,\n#not a command here\n")
    assert result.commands == (SetStatus(Status.PENDING), SetPriority(Priority.HIGH))
    assert result.errors == ()
    assert result.body == "Hi Carol,\n#not a command here"


def test_assign_me_names_the_sender_and_others_by_name_or_local_part() -> None:
    assert parse("#assign me").commands == (Assign("alice@example.com"),)
    assert parse("#assign bob").commands == (Assign("bob@example.com"),)
    assert parse("#assign bob stone").errors  # one word only
    assert parse("#assign Bob@Example.com").commands == (Assign("bob@example.com"),)


def test_unknown_command_is_an_error_quoting_the_line() -> None:
    result = parse("#stauts solved\nDone.")
    [error] = result.errors
    assert error.line == "#stauts solved"
    assert "unknown command #stauts" in error.message


def test_invalid_values_say_what_would_work() -> None:
    assert "open, pending, solved" in parse("#status closed").errors[0].message
    assert "low, normal, high, emergency" in parse("#priority urgent").errors[0].message
    assert "experts, tier1" in parse("#group sales").errors[0].message
    assert "no agent 'zed'" in parse("#assign zed").errors[0].message


def test_note_and_group() -> None:
    result = parse("#note\n#group experts\nInternal: check DNS")
    assert result.commands == (Note(), SetGroup("experts"))
    assert result.is_note and result.body == "Internal: check DNS"


def test_conflicting_commands_are_refused() -> None:
    assert parse("#status pending\n#status solved").errors[0].line == "#status"


def test_hash_followed_by_a_number_is_text() -> None:
    result = parse("#42 is our order number")
    assert result.commands == () and result.errors == ()
    assert result.body == "#42 is our order number"
