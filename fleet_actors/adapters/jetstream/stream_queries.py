"""Questions a rebuild asks of the event stream: where it ends, which stories changed since a time,
how many events a story has, which consumers are live, and removing a job's consumers."""

from __future__ import annotations

from datetime import datetime

import nats.errors
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from fleet_actors.adapters.jetstream.connection import nats_errors
from fleet_actors.adapters.jetstream.consumers import consumers, delete_consumers
from fleet_actors.adapters.jetstream.snapshot_store import snapshot_stream
from fleet_actors.settings import Settings


class StreamQueries:
    def __init__(self, nc: Client, settings: Settings) -> None:
        self._nc = nc
        self._settings = settings

    async def end_sequence(self) -> int:
        with nats_errors(f"reading the end of stream {self._settings.stream_name}"):
            info = await self._nc.jsm().stream_info(self._settings.stream_name)
        return info.state.last_seq

    async def stories_changed_since(self, since: datetime) -> list[str]:
        """Stories with an event stamped at or after ``since``: a headers-only scan from that time."""
        with nats_errors(f"finding the stories changed since {since.isoformat()}"):
            js = self._nc.jetstream()
            sub = await js.subscribe(
                f"{self._settings.subject_prefix}.>",
                ordered_consumer=True,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_TIME,
                    opt_start_time=since.isoformat(),  # type: ignore[arg-type]  # nats-py sends it as given
                    headers_only=True,
                    ack_policy=AckPolicy.NONE,
                ),
            )
            stories: set[str] = set()
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=1.0)
                    except (TimeoutError, nats.errors.TimeoutError):
                        break
                    stories.add(msg.subject.rsplit(".", 3)[-3])
                    if msg.metadata.num_pending == 0:
                        break
            finally:
                await sub.unsubscribe()
            return sorted(stories)

    async def count_events(self, story_id: str) -> int:
        with nats_errors(f"counting the events of story {story_id}"):
            info = await self._nc.jsm().stream_info(
                self._settings.stream_name, subjects_filter=self._settings.story_filter(story_id)
            )
        return sum((info.state.subjects or {}).values())

    async def waiting_consumers(self, prefix: str, exclude_suffix: str) -> list[str]:
        """Consumers named ``prefix...`` with a pull request waiting (a live reader)."""
        return [
            c.name
            for c in await consumers(self._nc, self._settings.stream_name)
            if c.name.startswith(prefix) and not c.name.endswith(exclude_suffix) and (c.num_waiting or 0) > 0
        ]

    async def delete_consumers_named(self, prefix: str) -> None:
        """Every consumer of the event and snapshot streams whose name starts with ``prefix``."""
        for stream in (self._settings.stream_name, snapshot_stream(self._settings)):
            names = [c.name for c in await consumers(self._nc, stream) if c.name.startswith(prefix)]
            await delete_consumers(self._nc, stream, names)

    async def hand_back_consumers(self, prefix: str) -> list[str]:
        """Make the events a stopped job's consumers had in hand deliverable at once.

        A killed reader never acknowledges or hands back what it took: JetStream would redeliver it
        only after the ack wait. Each such consumer is re-created at its ack floor (nothing before it
        is lost, what follows is delivered again, and the graph's version guard skips what was applied).
        Returns the names re-created."""
        restarted = []
        for stream in (self._settings.stream_name, snapshot_stream(self._settings)):
            for info in await consumers(self._nc, stream):
                if not info.name.startswith(prefix) or not info.num_ack_pending:
                    continue
                config = info.config
                floor = info.ack_floor.stream_seq if info.ack_floor else 0
                if floor:
                    config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                    config.opt_start_seq = floor + 1
                    config.opt_start_time = None
                with nats_errors(f"handing back the events consumer {info.name} held"):
                    await delete_consumers(self._nc, stream, [info.name])
                    await self._nc.jsm().add_consumer(stream, config)
                restarted.append(info.name)
        return restarted
