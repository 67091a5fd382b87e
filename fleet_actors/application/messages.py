"""What callers send to a story and what they get back (crosses the Ray boundary by pickle)."""

from __future__ import annotations

from dataclasses import dataclass

from fleet_actors.domain.commands import Command


@dataclass(frozen=True)
class CommandRequest:
    story_id: str
    command: Command
    #: idempotency key: resending it returns the first result and appends nothing
    command_id: str
    actor: str = ""
    #: optimistic concurrency from the caller's side: the story version they last saw
    expected_version: int | None = None


@dataclass(frozen=True)
class CommandResult:
    story_id: str
    #: the story's version after the command (read models catch up to it eventually)
    version: int
    event_ids: tuple[str, ...]
    command_id: str
    decision_id: str | None = None
    #: True when the command id had already been applied and nothing new was appended
    duplicate: bool = False
