"""Snapshots in their own stream: one subject per story, the last ``snapshot_keep`` kept per story."""

from __future__ import annotations

import json
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
    SubjectTransform,
)

from fleet_actors.adapters.jetstream.connection import translate_nats_error
from fleet_actors.codec.state import decode_state, encode_state
from fleet_actors.errors import BackendUnavailable, EventDecodeError, StoryError
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


def snapshot_partition_filter(settings: Settings, partition: int) -> str:
    return f"{settings.subject_prefix}-snapshots.*.{partition}"


class JetStreamSnapshotStore(SnapshotStore):
    def __init__(self, nc: Client, settings: Settings) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=settings.nats_timeout)
        self._jsm = nc.jsm(timeout=settings.nats_timeout)
        self._settings = settings

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
            subject_transform=SubjectTransform(
                src=f"{prefix}-snapshots.*",
                dest=f"{prefix}-snapshots.{{{{wildcard(1)}}}}.{{{{partition({self._settings.partitions},1)}}}}",
            ),
        )
        try:
            try:
                info = await self._jsm.stream_info(config.name)
                if info.config.max_msgs_per_subject != config.max_msgs_per_subject:
                    await self._jsm.update_stream(config)
            except nats.js.errors.NotFoundError:
                await self._jsm.add_stream(config)
        except Exception as error:
            raise translate_nats_error(error, "declaring the snapshot stream") from None

    async def save(self, snapshot: Snapshot) -> None:
        data = encode_state(snapshot.state, snapshot.last_sequence, snapshot.recent_commands)
        at = snapshot.state.updated_at.isoformat() if snapshot.state.updated_at else ""
        headers = {H_VERSION: str(snapshot.version), H_AT: at, "Nats-Msg-Id": f"{snapshot.story_id}@{snapshot.version}"}
        try:
            await self._js.publish(snapshot_subject(self._settings, snapshot.story_id), data, headers=headers)
        except Exception as error:
            raise translate_nats_error(error, f"saving a snapshot of story {snapshot.story_id}") from None

    async def refs(self, story_id: str) -> list[SnapshotRef]:
        return [ref for ref, _ in await self._read(story_id, with_data=False)]

    async def load(self, ref: SnapshotRef) -> Snapshot:
        try:
            msg = await self._jsm.get_msg(snapshot_stream(self._settings), seq=ref.position, direct=True)
        except nats.js.errors.NotFoundError:
            raise EventDecodeError(f"snapshot {ref.position} of story {ref.story_id} is gone") from None
        except Exception as error:
            raise translate_nats_error(error, f"loading a snapshot of story {ref.story_id}") from None
        state, last_sequence, commands = decode_state(msg.data or b"")
        if state.story_id != ref.story_id or state.version != ref.version:
            raise EventDecodeError(f"snapshot {ref.position} does not hold story {ref.story_id} v{ref.version}")
        return Snapshot(state, last_sequence, tuple(commands))

    async def _read(self, story_id: str, *, with_data: bool) -> list[tuple[SnapshotRef, bytes]]:
        """All kept snapshots of a story, by one direct batch get (a handful of messages)."""
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        request = {"seq": 1, "next_by_subj": snapshot_filter(self._settings, story_id), "batch": 1000}
        out = []
        try:
            await self._nc.publish(
                f"$JS.API.DIRECT.GET.{snapshot_stream(self._settings)}", json.dumps(request).encode(), reply=inbox
            )
            while True:
                msg = await sub.next_msg(timeout=self._settings.nats_timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status in ("204", "404"):
                    break
                if status:
                    raise BackendUnavailable(f"reading snapshots of story {story_id!r} failed: {status}")
                at = headers.get(H_AT)
                out.append(
                    (
                        SnapshotRef(
                            story_id,
                            int(headers.get(H_VERSION, "0")),
                            datetime.fromisoformat(at) if at else None,
                            int(headers["Nats-Sequence"]),
                        ),
                        msg.data if with_data else b"",
                    )
                )
                if headers.get("Nats-Num-Pending") == "0":
                    break
        except StoryError:
            raise
        except (TimeoutError, nats.errors.TimeoutError):
            raise BackendUnavailable(f"reading snapshots of story {story_id!r} timed out") from None
        except Exception as error:
            raise translate_nats_error(error, f"reading snapshots of story {story_id}") from None
        finally:
            await sub.unsubscribe()
        return out
