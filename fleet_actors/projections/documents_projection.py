"""The context documents as a projection on the public API (``projections/api.py``), written into a
key space of their own (``context:v{n}:{story}``): a new version of the documents built from the
whole history beside the live ones, which the built-in projector keeps writing. Groundwork for
blue/green (docs/projections.md, "Not yet built"): readers do not switch to it yet.

Exactly once: the version guard reads the documents' own versions (``applied_versions``), and a
document is replaced only by a newer one (the store's check-and-set), so a batch given again after
a crash changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.ports.read_models import ContextDocuments


class ContextDocumentsProjection:
    name = "context-documents"

    def __init__(self, documents: ContextDocuments, version: int = 2) -> None:
        """``documents``: a store over the key space of this version (the live documents are version 1)."""
        self.version = version
        self.documents = documents

    async def applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        return await self.documents.versions(story_ids)

    async def apply(self, batch: Mapping[str, Sequence[EventEnvelope]]) -> None:
        current = await self.documents.get_many(list(batch))
        states = []
        for story_id, events in batch.items():
            document = current[story_id]
            states.append(fold(document.state if document else StoryState(story_id), events))
        await self.documents.commit(states)

    async def verify(self, story_id: str, events: Sequence[EventEnvelope]) -> list[str]:
        """The document against a replay of the story's events up to the document's version. A document
        behind the log is lag, not a difference (the status row shows it); one ahead of it, or missing
        while the story has events, is a difference."""
        document = await self.documents.get(story_id)
        if document is None:
            return [f"{story_id}: no document (the log is at version {events[-1].version})"] if events else []
        if not events or document.version > events[-1].version:
            return [f"{story_id}: document at version {document.version} is ahead of the log"]
        expected = fold(StoryState(story_id), [e for e in events if e.version <= document.version])
        if document.state != expected:
            return [f"{story_id}: document at version {document.version} differs from a replay"]
        return []

    async def close(self) -> None:
        await self.documents.close()
