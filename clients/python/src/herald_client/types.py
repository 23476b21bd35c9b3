"""The public types: positions, messages, results and errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Position:
    """Where a channel is: `seq` (its Kafka offset) in `epoch` (the topic's
    incarnation)."""

    seq: int
    epoch: str


@dataclass(frozen=True)
class Message:
    """A delivered message, once per channel and in order."""

    channel: str
    seq: int
    epoch: str
    id: str
    ts: int
    data: Any
    # The publish's tags (empty when it had none).
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishResult:
    seq: int
    duplicate: bool


class HeraldError(Exception):
    """A refusal from the server (its `code` and `reason`), or `closed`
    when the client was closed with the call unanswered."""

    def __init__(self, code: str, reason: str = "") -> None:
        super().__init__(f"{code}: {reason}" if reason else code)
        self.code = code
        self.reason = reason


class ApiError(Exception):
    """A server-API call answered with a status other than 200."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"HTTP {status} {code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason
