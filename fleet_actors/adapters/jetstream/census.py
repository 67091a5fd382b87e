"""Count the stored events by type and schema version (which upcasters are still needed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from fleet_actors.adapters.jetstream.connection import connect_nats, nats_errors
from fleet_actors.codec import CURRENT_VERSIONS, event_type_of
from fleet_actors.proto import events_pb2
from fleet_actors.settings import Settings


@dataclass(frozen=True)
class CensusRow:
    event_type: str
    schema_version: int
    count: int
    current_version: int

    @property
    def status(self) -> str:
        if not self.current_version:
            return "UNKNOWN TYPE: upgrade fleet-actors"
        if self.schema_version > self.current_version:
            return "NEWER THAN THIS CODE: upgrade fleet-actors"
        if self.schema_version < self.current_version:
            return f"upcast on every read (v{self.schema_version} -> v{self.current_version})"
        return "current"


async def event_census(settings: Settings) -> tuple[list[CensusRow], int]:
    """Every stored event, read once in stream order; returns the rows and the count of unreadable ones."""
    nc = await connect_nats(settings, name="fleet-census")
    counts: Counter[tuple[str, int]] = Counter()
    unreadable = 0
    try:
        with nats_errors("counting stored events"):
            info = await nc.jsm().stream_info(settings.stream_name)
            last = info.state.last_seq
            if info.state.messages:
                sub = await nc.jetstream().subscribe(
                    f"{settings.subject_prefix}.>",
                    ordered_consumer=True,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
                )
                try:
                    while True:
                        msg = await sub.next_msg(timeout=settings.nats_timeout)
                        message = events_pb2.ContextEvent()
                        try:
                            message.ParseFromString(msg.data)
                            counts[(event_type_of(message) or "?", message.schema_version or 1)] += 1
                        except DecodeError:
                            unreadable += 1
                        if msg.metadata.sequence.stream >= last or msg.metadata.num_pending == 0:
                            break
                finally:
                    await sub.unsubscribe()
    finally:
        await nc.close()
    rows = [
        CensusRow(event_type, version, count, CURRENT_VERSIONS.get(event_type, 0))
        for (event_type, version), count in sorted(counts.items())
    ]
    return rows, unreadable
