"""Snapshots in their own stream: one subject per story, the last ``snapshot_keep`` kept per story."""

from __future__ import annotations

from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
    SubjectTransform,
)
from nats.js.client import JetStreamContext

from fleet_actors.adapters.jetstream.connection import declare_stream, nats_errors, stream_placement
from fleet_actors.codec.state import SnapshotEncoder, decode_snapshot, snapshot_position
from fleet_actors.errors import EventDecodeError
from fleet_actors.ports.snapshot_store import Snapshot, SnapshotRef, SnapshotStore
from fleet_actors.settings import Settings

H_VERSION = "Fleet-Version"
H_AT = "Fleet-At"


def snapshot_stream(settings: Settings) -> str:
    return f"{settings.stream_name}_SNAPSHOTS"


def snapshot_subject(settings: Settings, story_id: str) -> str:
    """Where a snapshot is published; stored with a partition token appended, like events."""
    return f"{settings.subject_prefix}-snapshots.{story_id}"


def snapshot_filter(settings: Settings, story_id: str) -> str:
    return f"{settings.subject_prefix}-snapshots.{story_id}.>"


class JetStreamSnapshotStore(SnapshotStore):
    def __init__(self, nc: Client, settings: Settings) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=settings.nats_timeout)
        self._jsm = nc.jsm(timeout=settings.nats_timeout)
        self._settings = settings
        self._encoder = SnapshotEncoder()  # re-encodes only what changed since a story's last snapshot

    async def ensure_stream(self) -> None:
        prefix = self._settings.subject_prefix
        config = StreamConfig(
            name=snapshot_stream(self._settings),
            subjects=[f"{self._settings.subject_prefix}-snapshots.>"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=self._settings.snapshot_keep,
            compression=StoreCompression.S2,
            allow_direct=True,
            num_replicas=self._settings.stream_replicas,
            placement=stream_placement(self._settings),
            subject_transform=SubjectTransform(
                src=f"{prefix}-snapshots.*",
                dest=f"{prefix}-snapshots.{{{{wildcard(1)}}}}.{{{{partition({self._settings.partitions},1)}}}}",
            ),
        )
        await declare_stream(
            self._jsm, config, ("max_msgs_per_subject", "num_replicas", "placement"), "the snapshot stream"
        )

    async def save(self, snapshot: Snapshot) -> None:
        data = self._encoder.encode(
            snapshot.state, snapshot.last_sequence, snapshot.recent_commands, snapshot.window_start_sequence
        )
        at = snapshot.state.updated_at.isoformat() if snapshot.state.updated_at else ""
        headers = {H_VERSION: str(snapshot.version), H_AT: at, "Nats-Msg-Id": f"{snapshot.story_id}@{snapshot.version}"}
        with nats_errors(f"saving a snapshot of story {snapshot.story_id}"):
            await self._js.publish(snapshot_subject(self._settings, snapshot.story_id), data, headers=headers)

    async def refs(self, story_id: str) -> list[SnapshotRef]:
        """Headers only (version, time, position): a story's snapshots can be large, and only one is needed."""
        with nats_errors(f"listing snapshots of story {story_id}"):
            # How many first: a consumer over none would wait for a message that never comes.
            try:
                info = await self._jsm.stream_info(
                    snapshot_stream(self._settings), subjects_filter=snapshot_filter(self._settings, story_id)
                )
            except nats.js.errors.NotFoundError:
                return []  # no story actor has run yet: no snapshot stream
            if not sum((info.state.subjects or {}).values()):
                return []
            sub = await self._js.subscribe(
                snapshot_filter(self._settings, story_id),
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, headers_only=True),
            )
            try:
                return await self._read_refs(story_id, sub)
            finally:
                await sub.unsubscribe()

    async def _read_refs(self, story_id: str, sub: JetStreamContext.PushSubscription) -> list[SnapshotRef]:
        out: list[SnapshotRef] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5 if not out else self._settings.nats_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                return out  # no (more) snapshots
            headers = msg.headers or {}
            at = headers.get(H_AT)
            out.append(
                SnapshotRef(
                    story_id,
                    int(headers.get(H_VERSION, "0")),
                    datetime.fromisoformat(at) if at else None,
                    msg.metadata.sequence.stream,
                )
            )
            if msg.metadata.num_pending == 0:
                return out

    async def latest(
        self, story_id: str, *, max_version: int | None = None, at: datetime | None = None
    ) -> Snapshot | None:
        """The newest snapshot is one direct get; only a constrained or unreadable one needs the listing."""
        if max_version is None and at is None:
            with nats_errors(f"loading the snapshot of story {story_id}"):
                try:
                    msg = await self._jsm.get_last_msg(
                        snapshot_stream(self._settings), snapshot_filter(self._settings, story_id), direct=True
                    )
                except nats.js.errors.NotFoundError:
                    return None
            try:
                state, last_sequence, commands, window_start = decode_snapshot(msg.data or b"")
                if state.story_id == story_id:
                    return Snapshot(state, last_sequence, tuple(commands), window_start)
            except EventDecodeError:
                pass  # fall back to the older ones
        return await super().latest(story_id, max_version=max_version, at=at)

    async def sequence_before(self, story_id: str, version: int) -> int:
        """As the port says, reading only the snapshot's position, not its state."""
        for ref in reversed(await self.refs(story_id) if version > 1 else []):
            if ref.version >= version:
                continue
            try:
                msg = await self._get(ref)
                found_story, found_version, last_sequence = snapshot_position(msg.data or b"")
            except EventDecodeError:
                continue
            if (found_story, found_version) == (story_id, ref.version):
                return last_sequence
        return 0

    async def _get(self, ref: SnapshotRef) -> RawStreamMsg:
        with nats_errors(f"loading a snapshot of story {ref.story_id}"):
            try:
                return await self._jsm.get_msg(snapshot_stream(self._settings), seq=ref.position, direct=True)
            except nats.js.errors.NotFoundError:
                raise EventDecodeError(f"snapshot {ref.position} of story {ref.story_id} is gone") from None

    async def load(self, ref: SnapshotRef) -> Snapshot:
        msg = await self._get(ref)
        state, last_sequence, commands, window_start = decode_snapshot(msg.data or b"")
        if state.story_id != ref.story_id or state.version != ref.version:
            raise EventDecodeError(f"snapshot {ref.position} does not hold story {ref.story_id} v{ref.version}")
        return Snapshot(state, last_sequence, tuple(commands), window_start)
