"""The built-in read models, the decision graph and the context documents, as one projection on the
public API (``projections/api.py``), run by the same runner as any user projection
(``projections/runner.py``).

One fold of each story's state feeds both targets: the graph's transaction first (its Story nodes
hold their applied version, checked again inside the transaction), then the documents' commit (a
document is only replaced by a newer one, with the batch's processed event ids and consumer
positions). A document is therefore never ahead of the graph, and the runner's version guard reads
the documents' versions (``applied_versions``); a graph behind the events at hand (wiped by a
rebuild, a lost transaction) is caught up from the log inside ``apply``.

The same class, with one target, is version n of either read model built beside the live one
(blue/green, docs/projections.md section 8): :class:`GraphProjection` (graph only, its own
database; also the in-place rebuild's replayers, on the live graph) and
:class:`ContextDocumentsProjection` (documents only, their own key space).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence

from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.errors import ProjectionGap
from fleet_actors.ports.event_feed import SnapshotNotices
from fleet_actors.ports.event_store import EventStore
from fleet_actors.ports.read_models import ContextDocuments, GraphReadModel, SnapshotLink, expected_graph
from fleet_actors.projections.api import batch_positions
from fleet_actors.projections.verify import actual_graph, document_differences, graph_differences

#: states kept between batches (least recently used out); beyond it a story's state is read again
#: from its document, or folded from the log where there are no documents
STATE_CACHE = 20_000
#: reads of a story's subgraph in ``verify`` before comparing one that moved while it was read
VERIFY_ATTEMPTS = 5
#: seconds between polls of the snapshot notices (ContextSnapshot nodes)
SNAPSHOT_POLL_SECONDS = 1.0


class ReadModelsProjection:
    """The graph and/or the context documents of every story, from one fold of its events."""

    def __init__(
        self,
        *,
        graph: GraphReadModel | None,
        documents: ContextDocuments | None,
        store: EventStore | None,
        name: str = "read-models",
        version: int = 1,
        state_cache: int = STATE_CACHE,
    ) -> None:
        """``store``: the log, to fold a story whose state is neither cached nor in a document and to
        catch the graph up (None: a documents-only projection, whose guard hands it each story's
        events from its document on). The runner hands it snapshot notices to show as ContextSnapshot nodes
        (``use_snapshot_notices``; graph only)."""
        if graph is None and documents is None:
            raise ValueError("a read-models projection needs a graph, documents, or both")
        self.name = name
        self.version = version
        self.graph = graph
        self.documents = documents
        self.store = store
        self.snapshots: SnapshotNotices | None = None
        self._state_cache = state_cache
        #: the states this projection last wrote (most recent last): the graph holds these versions
        self._states: collections.OrderedDict[str, StoryState] = collections.OrderedDict()
        self._next_snapshot_poll = 0.0
        #: the last batch's graph and document writes, (start, end) in time.time_ns() (for traces)
        self.write_spans: dict[str, tuple[int, int]] = {}

    # --- the projection API -------------------------------------------------------------------

    async def applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        """The lower of the targets' versions: each story's events go on from where the target that
        is furthest behind stands (the graph and the documents may be versions written by others
        too, e.g. after readers were switched to a version another runner built)."""
        if self.graph is None:
            assert self.documents is not None
            return await self.documents.versions(story_ids)
        graph = await self._graph_versions(story_ids)
        if self.documents is None:
            return graph
        documents = await self.documents.versions(story_ids)
        return {story_id: min(documents.get(story_id, 0), graph.get(story_id, 0)) for story_id in story_ids}

    async def _graph_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        """The graph's version of each story: the one this projection last wrote there, else read (a
        read of the graph every batch cost a replay a third of its rate). Should the graph have moved
        meanwhile, its write transaction still skips what it holds and reports what it lacks, which
        ``apply`` heals from the log."""
        assert self.graph is not None
        known = {story_id: self._states[story_id].version for story_id in story_ids if story_id in self._states}
        missing = [story_id for story_id in story_ids if story_id not in known]
        if missing:
            known.update(await self.graph.applied_versions(missing))
        return known

    async def apply(self, batch: Mapping[str, Sequence[EventEnvelope]]) -> None:
        states = await self._folded(batch)
        started = time.time_ns()
        if self.graph is not None:
            await self._apply_graph(batch, states)
        written = time.time_ns()
        if self.documents is not None:
            event_ids = [e.event_id for events in batch.values() for e in events]
            await self.documents.commit(states.values(), processed_event_ids=event_ids, offsets=batch_positions())
        self.write_spans = {"graph.write": (started, written), "documents.write": (written, time.time_ns())}
        for story_id, state in states.items():
            self._states[story_id] = state
            self._states.move_to_end(story_id)
        while len(self._states) > self._state_cache:
            self._states.popitem(last=False)

    async def use_snapshot_notices(self, notices: SnapshotNotices) -> None:
        """From the runner: the snapshot notices of a consumer of this projection's own."""
        self.snapshots = notices if self.graph is not None else None

    async def tick(self) -> None:
        """Between batches: ContextSnapshot nodes for snapshots whose story the graph holds at that version."""
        if self.snapshots is None or self.graph is None or time.monotonic() < self._next_snapshot_poll:
            return
        self._next_snapshot_poll = time.monotonic() + SNAPSHOT_POLL_SECONDS
        await self.link_snapshots()

    async def link_snapshots(self, retry_after: float = 5.0) -> int:
        """Link the snapshots noticed so far; returns how many were linked."""
        assert self.snapshots is not None and self.graph is not None
        notices = await self.snapshots.poll()
        if not notices:
            return 0
        versions = await self.graph.applied_versions(sorted({n.story_id for n in notices}))
        ready = [n for n in notices if versions.get(n.story_id, 0) >= n.version]
        await self.graph.link_snapshots([SnapshotLink(n.story_id, n.version, n.at) for n in ready])
        for notice in notices:
            if versions.get(notice.story_id, 0) >= notice.version:
                await notice.done()
            else:
                await notice.later(retry_after)  # the story's events are not projected yet
        return len(ready)

    async def verify(self, story_id: str, events: Sequence[EventEnvelope]) -> list[str]:
        """Each target against a replay of the story's events up to the version it holds of it: a
        target behind the log is lag, not a difference; one ahead of it is."""
        differences: list[str] = []
        if self.graph is not None:
            differences += await self._verify_graph(story_id, events)
        if self.documents is not None:
            differences += await self._verify_document(story_id, events)
        return differences

    async def close(self) -> None:
        for target in (self.graph, self.documents):
            if target is not None:
                await target.close()

    # --- folding and the graph ------------------------------------------------------------------

    async def _folded(self, batch: Mapping[str, Sequence[EventEnvelope]]) -> dict[str, StoryState]:
        """Each story's state after its events: from the cached state, else its document, else the log."""
        before = {story_id: events[0].version - 1 for story_id, events in batch.items()}
        known: dict[str, StoryState] = {}
        for story_id, version in before.items():
            state = self._states.get(story_id)
            if version == 0:
                known[story_id] = StoryState(story_id)
            elif state is not None and state.version == version:
                known[story_id] = state
        missing = [story_id for story_id in batch if story_id not in known]
        if missing and self.documents is not None:
            documents = await self.documents.get_many(missing)
            for story_id in missing:
                document = documents.get(story_id)
                if document is not None and document.version == before[story_id]:
                    known[story_id] = document.state
        for story_id in batch:
            if story_id not in known:
                known[story_id] = await self._state_from_log(story_id, before[story_id])
        return {story_id: fold(known[story_id], events) for story_id, events in batch.items()}

    async def _state_from_log(self, story_id: str, version: int) -> StoryState:
        if self.store is None:
            raise ProjectionGap(f"story {story_id!r}: its document is not at version {version} and there is no log")
        events = await read_log(self.store, story_id, 0, version)
        _contiguous(story_id, events, 0, version)
        return fold(StoryState(story_id), events)

    async def _apply_graph(
        self, batch: Mapping[str, Sequence[EventEnvelope]], states: Mapping[str, StoryState]
    ) -> None:
        assert self.graph is not None and self.store is not None
        result = await self.graph.apply(batch, states)
        for story_id, graph_version in result.gaps.items():
            # The graph is behind these events: apply its missing events from the log, then these.
            state = states[story_id]
            missing = await read_log(self.store, story_id, graph_version, state.version)
            try:
                _contiguous(story_id, missing, graph_version, state.version)
                if story_id in (await self.graph.apply({story_id: missing}, {story_id: state})).gaps:
                    raise ProjectionGap(f"story {story_id!r}: the graph (at {graph_version}) could not be caught up")
            except ProjectionGap:
                self._states.pop(story_id, None)
                raise

    async def _verify_graph(self, story_id: str, events: Sequence[EventEnvelope]) -> list[str]:
        assert self.graph is not None
        for _ in range(VERIFY_ATTEMPTS):  # the parts are read one query each: not while the story moves
            version = (await self.graph.applied_versions([story_id])).get(story_id, 0)
            have = await actual_graph(self.graph, story_id)
            if (await self.graph.applied_versions([story_id])).get(story_id, 0) == version:
                break
        label = f"graph v{self.version}"
        if version > (events[-1].version if events else 0):
            return [f"{story_id}: {label} at version {version} is ahead of the log"]
        expected = fold(StoryState(story_id), [e for e in events if e.version <= version])
        return [f"{story_id}: {d}" for d in graph_differences(expected_graph(expected), have)]

    async def _verify_document(self, story_id: str, events: Sequence[EventEnvelope]) -> list[str]:
        assert self.documents is not None
        document = await self.documents.get(story_id)
        if document is None:
            return [f"{story_id}: no document (the log is at version {events[-1].version})"] if events else []
        if not events or document.version > events[-1].version:
            return [f"{story_id}: document at version {document.version} is ahead of the log"]
        expected = fold(StoryState(story_id), [e for e in events if e.version <= document.version])
        return [f"{story_id}: {d}" for d in document_differences(document, expected)]


class GraphProjection(ReadModelsProjection):
    """Version n of the decision graph, in a database of its own (graph blue/green); on the live
    graph, the in-place rebuild's replayers (``composition.open_replayer``)."""

    def __init__(self, graph: GraphReadModel, store: EventStore, version: int = 2, **options: object) -> None:
        super().__init__(graph=graph, documents=None, store=store, name="graph", version=version, **options)  # type: ignore[arg-type]


class ContextDocumentsProjection(ReadModelsProjection):
    """Version n of the context documents, in key space ``context:v{n}:{story}`` (documents blue/green)."""

    use_snapshot_notices = None  # type: ignore[assignment]  # no graph: no snapshot nodes, no consumer for them

    def __init__(self, documents: ContextDocuments, version: int = 2, store: EventStore | None = None) -> None:
        # The runner hands each story's events from its document's version on: the log is only
        # read for a document that went missing between the guard and the fold.
        super().__init__(graph=None, documents=documents, store=store, name="context-documents", version=version)


async def read_log(store: EventStore, story_id: str, after_version: int, up_to_version: int) -> list[EventEnvelope]:
    """The story's events with ``after_version < version <= up_to_version``, from the log."""
    return [
        stored.envelope
        async for stored in store.read(story_id)
        if after_version < stored.envelope.version <= up_to_version
    ]


def _contiguous(story_id: str, events: Sequence[EventEnvelope], after: int, up_to: int) -> None:
    """The log's events after ``after`` must run without a hole up to ``up_to``."""
    if [e.version for e in events] != list(range(after + 1, up_to + 1)):
        raise ProjectionGap(f"story {story_id!r}: the log lacks events between versions {after} and {up_to}")
