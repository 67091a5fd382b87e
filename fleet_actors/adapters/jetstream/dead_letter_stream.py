"""The dead-letter stream: a poison event's original bytes, stored with the reason it was parked."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from fleet_actors.adapters.jetstream.connection import declare_stream, nats_errors, stream_placement
from fleet_actors.ports.read_models import ParkedEvent
from fleet_actors.settings import Settings


def dlq_stream(settings: Settings) -> str:
    return f"{settings.stream_name}_DLQ"


def dlq_subject(settings: Settings, story_id: str) -> str:
    return f"{settings.subject_prefix}-dlq.{story_id}"


class DeadLetterStream:
    def __init__(self, nc: Client, settings: Settings) -> None:
        self._js = nc.jetstream()
        self._jsm = nc.jsm()
        self._settings = settings

    async def ensure_stream(self) -> None:
        config = StreamConfig(
            name=dlq_stream(self._settings),
            subjects=[f"{self._settings.subject_prefix}-dlq.>"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            num_replicas=self._settings.stream_replicas,
            placement=stream_placement(self._settings),
        )
        await declare_stream(self._jsm, config, ("num_replicas", "placement"), "the dead-letter stream")

    async def store(self, event: ParkedEvent, data: bytes) -> int:
        """Store the original bytes with the reason; returns the dead-letter stream's sequence."""
        headers = {
            "Fleet-Error": event.error[:1000],
            "Fleet-Deliveries": str(event.deliveries),
            "Fleet-Original-Sequence": str(event.stream_sequence),
            "Fleet-Original-Subject": event.subject,
            "Nats-Msg-Id": f"dlq-{event.consumer}-{event.stream_sequence}",
        }
        with nats_errors("parking a poison event"):
            ack = await self._js.publish(dlq_subject(self._settings, event.story_id), data, headers=headers)
        return ack.seq
