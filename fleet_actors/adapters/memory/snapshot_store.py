"""In-memory snapshots for tests (same selection rules as the JetStream store)."""

from __future__ import annotations

from fleet_actors.codec.state import SnapshotEncoder, decode_snapshot
from fleet_actors.ports.snapshot_store import Snapshot, SnapshotRef, SnapshotStore


class InMemorySnapshotStore(SnapshotStore):
    def __init__(self) -> None:
        self.blobs: dict[int, bytes] = {}
        self._refs: dict[str, list[SnapshotRef]] = {}
        self._encoder = SnapshotEncoder()

    async def save(self, snapshot: Snapshot) -> None:
        position = len(self.blobs) + 1
        self.blobs[position] = self._encoder.encode(
            snapshot.state, snapshot.last_sequence, snapshot.recent_commands, snapshot.window_start_sequence
        )
        ref = SnapshotRef(snapshot.story_id, snapshot.version, snapshot.state.updated_at, position)
        self._refs.setdefault(snapshot.story_id, []).append(ref)

    async def refs(self, story_id: str) -> list[SnapshotRef]:
        return list(self._refs.get(story_id, []))

    async def load(self, ref: SnapshotRef) -> Snapshot:
        state, last_sequence, commands, window_start = decode_snapshot(self.blobs[ref.position])
        return Snapshot(state, last_sequence, tuple(commands), window_start)
