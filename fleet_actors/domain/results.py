"""What a story answers to an accepted command: part of the domain's vocabulary, shared by the
runtime, the snapshot codec (recent results make retries idempotent after activation) and callers."""

from __future__ import annotations

from dataclasses import dataclass


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
