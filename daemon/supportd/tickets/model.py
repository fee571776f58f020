"""Model: the values a ticket is made of (statuses, priorities, the ticket itself)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Status(StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    SOLVED = "solved"
    CLOSED = "closed"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    EMERGENCY = "emergency"


@dataclass(frozen=True)
class Ticket:
    id: int
    subject: str
    status: Status
    priority: Priority
    group: str
    assignee: str | None
    requester: str
    account: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Participant:
    email: str
    role: str  # "requester" | "cc"
