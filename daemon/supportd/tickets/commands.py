"""Commands: the `#status pending`-style lines at the top of an agent's reply (pure).

Command lines come first in the reply (blank lines between them are fine); the first line
that does not start with `#` ends them and begins the text relayed to the customer. A line
starting with `#` followed by a digit (`#42 is our order number`) is text, not a command.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from supportd.tickets.model import Priority, Status

AGENT_STATUSES = (Status.OPEN, Status.PENDING, Status.SOLVED)
_COMMAND_LINE = re.compile(r"#([A-Za-z][\w-]*)(.*)")


@dataclass(frozen=True)
class SetStatus:
    status: Status


@dataclass(frozen=True)
class Assign:
    agent: str  # the agent's address


@dataclass(frozen=True)
class Note:
    """The whole mail is an internal note: stored on the ticket, never relayed."""


@dataclass(frozen=True)
class SetPriority:
    priority: Priority


@dataclass(frozen=True)
class SetGroup:
    group: str


Command = SetStatus | Assign | Note | SetPriority | SetGroup


@dataclass(frozen=True)
class CommandError:
    line: str
    message: str

    def __str__(self) -> str:
        return f"{self.line!r}: {self.message}"


@dataclass(frozen=True)
class ParsedCommands:
    commands: tuple[Command, ...]
    errors: tuple[CommandError, ...]
    body: str  # the text after the command lines

    @property
    def is_note(self) -> bool:
        return any(isinstance(c, Note) for c in self.commands)


def parse_commands(
    text: str, *, sender: str, agents: Mapping[str, str], groups: frozenset[str]
) -> ParsedCommands:
    """Split `text` into command lines and body, checking each command.

    `agents` maps every agent address to its display name; `sender` is the agent writing.
    """
    lines = text.split("\n")
    commands: list[Command] = []
    errors: list[CommandError] = []
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        match = _COMMAND_LINE.fullmatch(stripped)
        if stripped and not match:
            break
        index += 1
        if match:
            command = _one_command(match[1].lower(), match[2].split(), sender, agents, groups)
            if isinstance(command, str):
                errors.append(CommandError(stripped, command))
            else:
                commands.append(command)
    errors.extend(_conflicts(commands))
    return ParsedCommands(tuple(commands), tuple(errors), "\n".join(lines[index:]).strip("\n"))


def _one_command(
    name: str, args: list[str], sender: str, agents: Mapping[str, str], groups: frozenset[str]
) -> Command | str:
    """The command, or a sentence saying what is wrong and what would work."""
    if name == "status":
        choices = [s.value for s in AGENT_STATUSES]
        if len(args) != 1 or args[0].lower() not in choices:
            return f"#status takes one of {', '.join(choices)}"
        return SetStatus(Status(args[0].lower()))
    if name == "assign":
        if len(args) != 1:
            return "#assign takes `me` or one agent (address, name or the part before @)"
        return _assignee(args[0], sender, agents)
    if name == "note":
        return Note() if not args else "#note takes nothing after it; write the note below it"
    if name == "priority":
        choices = [p.value for p in Priority]
        if len(args) != 1 or args[0].lower() not in choices:
            return f"#priority takes one of {', '.join(choices)}"
        return SetPriority(Priority(args[0].lower()))
    if name == "group":
        if len(args) != 1 or args[0] not in groups:
            return f"#group takes one of {', '.join(sorted(groups))}"
        return SetGroup(args[0])
    return f"unknown command #{name}; known: #status, #assign, #note, #priority, #group"


def _assignee(who: str, sender: str, agents: Mapping[str, str]) -> Assign | str:
    wanted = who.lower()
    if wanted == "me":
        return Assign(sender)
    matches = [
        email for email, name in agents.items()
        if wanted in (email, email.partition("@")[0], name.lower())
    ]
    if len(matches) == 1:
        return Assign(matches[0])
    if matches:
        return f"{who!r} matches several agents: {', '.join(sorted(matches))}"
    return f"no agent {who!r}; agents: {', '.join(sorted(agents))}"


def _conflicts(commands: list[Command]) -> list[CommandError]:
    errors = []
    for kind, word in ((SetStatus, "#status"), (Assign, "#assign"), (SetPriority, "#priority"),
                       (SetGroup, "#group")):
        given = [c for c in commands if isinstance(c, kind)]
        if len({repr(c) for c in given}) > 1:
            errors.append(CommandError(word, f"given {len(given)} times with different values"))
    return errors
