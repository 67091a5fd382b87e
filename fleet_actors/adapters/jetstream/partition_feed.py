"""One durable pull consumer per partition, fetched concurrently, merged into batches.

Why one consumer per partition and not one consumer with a filter per owned partition: nats-server
(2.15) serves a consumer with several filter subjects by scanning the stream's subjects for every
message it delivers; on a stream of a few thousand stories that cost ~1 ms of server CPU per
message (about 1,200 messages/s with both cores busy), while a consumer with a single filter
subject delivers 6,000-8,000 messages/s at a fraction of the CPU. It also makes consumer names
independent of the pool size: resizing the projector pool only moves partitions between actors.

Each partition has a pull loop that keeps pull requests open, so the next messages arrive while the
previous batch is still being written (the read models, not the fetch, set the pace). Messages of
one partition are handed out in stream order; partitions interleave freely.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from fleet_actors.adapters.jetstream.connection import ERR_CONSUMER_NOT_FOUND, nats_errors, translate_nats_error
from fleet_actors.errors import BackendUnavailable, ConfigurationError
from fleet_actors.ports.event_feed import PartitionConsumer, partition_of

__all__ = ["PartitionConsumer", "PartitionFeed", "hand_back", "partition_of"]

log = logging.getLogger(__name__)

#: pause after a failed or refused pull (JetStream restarting, consumer gone), doubling while the
#: server keeps refusing: the task keeps trying, but never in a loop that hammers a recovering server
FETCH_RETRY_SECONDS = 0.5
FETCH_RETRY_MAX_SECONDS = 5.0
#: how long arrived messages wait for more before they are handed on
LINGER_SECONDS = 0.005
#: a pull request's lifetime, and the server's heartbeat while one waits: silence for a few
#: heartbeats means the server no longer has our requests
PULL_EXPIRES = 5.0
HEARTBEAT = 1.0
HEARTBEAT_STATUS, REQUEST_EXPIRED, CONFLICT, NO_RESPONDERS = "100", "408", "409", "503"


class PartitionFeed:
    """Batches of messages from several single-partition durable consumers of one stream.

    With ``end_sequence``, a partition is finished at the first message past it (that message and
    later ones are left to whoever reads on), and ``finished()`` tells when every partition is.
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        consumers: Sequence[PartitionConsumer],
        config: Callable[[PartitionConsumer], ConsumerConfig],
        *,
        fetch_size: int,
        end_sequence: int | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        api_prefix: str = "$JS.API",
    ) -> None:
        if not consumers:
            raise ValueError("a feed needs at least one partition")
        self.consumers = list(consumers)
        self._nc, self._stream, self._config = nc, stream, config
        self._fetch_size = max(1, fetch_size)
        self._end = end_sequence
        self._on_error = on_error or (lambda error: log.warning("%s", error))
        self._api_prefix = api_prefix
        # Bounded: a stalled consumer of the batches (read model down) stops the fetching too.
        self._ready: asyncio.Queue[list[Msg]] = asyncio.Queue(maxsize=2 * len(self.consumers))
        self._carry: list[Msg] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._past_end: set[str] = set()
        #: messages to hand back when the feed stops
        self._returned: list[Msg] = []

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.consumers]

    async def start(self) -> None:
        """Create the consumers that are missing and start pulling from each."""
        with nats_errors(f"binding consumers of stream {self._stream}"):
            for consumer in self.consumers:
                await self._ensure(consumer)
        self._tasks = [asyncio.create_task(self._pull_loop(c)) for c in self.consumers]

    async def _ensure(self, consumer: PartitionConsumer) -> None:
        jsm = self._nc.jsm()
        try:
            info = await jsm.consumer_info(self._stream, consumer.name)
        except nats.js.errors.NotFoundError:
            await jsm.add_consumer(self._stream, self._config(consumer))
            return
        filters = info.config.filter_subjects or [info.config.filter_subject]
        if filters != [consumer.filter_subject]:
            raise ConfigurationError(
                f"consumer {consumer.name} exists with filter {filters}, not {consumer.filter_subject!r}; "
                "delete it first (fleet-actors projections start does this for projector consumers)"
            )

    async def _pull_loop(self, consumer: PartitionConsumer) -> None:
        """A continuous pull: requests keep about ``fetch_size`` messages in flight, and what arrives is
        handed on after at most ``LINGER_SECONDS`` (nats-py's fetch holds a partial batch until its
        timeout, which would put up to a second of latency on every quiet partition)."""
        pull = _Pull(self._fetch_size, self._on_error, consumer.name)
        subject = f"{self._api_prefix}.CONSUMER.MSG.NEXT.{self._stream}.{consumer.name}"
        request = json.dumps(
            {"batch": self._fetch_size, "expires": int(PULL_EXPIRES * 1e9), "idle_heartbeat": int(HEARTBEAT * 1e9)}
        ).encode()
        sub = await self._nc.subscribe(self._nc.new_inbox(), cb=pull.receive)
        retry = FETCH_RETRY_SECONDS
        try:
            while not self._stopping.is_set() and consumer.name not in self._past_end:
                if pull.refused:  # answered at once, so asking again at once would be a busy loop
                    pull.refused = False
                    await self._pause(retry)
                    retry = min(retry * 2, FETCH_RETRY_MAX_SECONDS)
                    await self._recreate_if_missing(consumer)
                    continue
                if pull.served:
                    pull.served, retry = False, FETCH_RETRY_SECONDS
                if time.monotonic() - pull.heard > 3 * HEARTBEAT:
                    pull.credit = 0  # silence: the server lost our requests (restart, reconnect)
                if pull.credit <= self._fetch_size // 2:
                    try:
                        await self._nc.publish(subject, request, reply=sub.subject)
                        pull.credit += self._fetch_size
                        pull.heard = time.monotonic()
                    except Exception as error:
                        self._on_error(translate_nats_error(error, f"pulling from consumer {consumer.name}"))
                        await self._pause(retry)
                        retry = min(retry * 2, FETCH_RETRY_MAX_SECONDS)
                        continue
                await pull.arrived(HEARTBEAT)  # the first message, a full group, or credit running low
                if pull.group and len(pull.group) < self._fetch_size:
                    await asyncio.sleep(LINGER_SECONDS)  # the rest of a burst
                if pull.group:
                    msgs, pull.group = pull.group, []
                    await self._hand_on(consumer, msgs)
        finally:
            # Interest gone, so the server sends nothing more here (see stop()).
            with contextlib.suppress(Exception):
                await sub.drain()
            self._returned.extend(pull.group)

    async def _recreate_if_missing(self, consumer: PartitionConsumer) -> None:
        """A refusal may mean the consumer is gone (deleted by hand, lost with the server's state): then
        it is created again from its configured start, and the readers skip what they already hold
        (the read models are guarded by story version). Without this the feed would wait for an
        operator, and the read models would fall behind, silently but for the refusals in the log."""
        if self._stopping.is_set():
            return
        jsm = self._nc.jsm()
        try:
            await jsm.consumer_info(self._stream, consumer.name)
            return  # there: the refusal was something else (JetStream starting, leadership moving)
        except nats.js.errors.NotFoundError as error:
            if error.err_code != ERR_CONSUMER_NOT_FOUND:
                return  # the stream itself is gone: nothing to bind a consumer to
        except Exception:
            return  # JetStream not answering: the next pull finds out again
        try:
            await jsm.add_consumer(self._stream, self._config(consumer))
        except Exception as error:
            self._on_error(translate_nats_error(error, f"re-creating consumer {consumer.name}"))
            return
        log.warning(
            "consumer %s of stream %s was missing and has been re-created from its configured start; "
            "events the read models already hold are skipped", consumer.name, self._stream,
        )  # fmt: skip

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _hand_on(self, consumer: PartitionConsumer, msgs: list[Msg]) -> None:
        if self._end is not None:
            mine = [m for m in msgs if m.metadata.sequence.stream <= self._end]
            if len(mine) < len(msgs):
                self._past_end.add(consumer.name)
                self._returned.extend(msgs[len(mine) :])
            msgs = mine
        if msgs and self._stopping.is_set():
            self._returned.extend(msgs)
        elif msgs:
            await self._ready.put(msgs)

    async def next_batch(self, max_msgs: int, timeout: float) -> list[Msg]:
        """Up to ``max_msgs`` messages: waits up to ``timeout`` for the first, then takes what is ready.

        Raises ``TimeoutError`` when nothing arrived.
        """
        if not self._carry:
            self._carry = await asyncio.wait_for(self._ready.get(), timeout)
        batch = self._carry
        while len(batch) < max_msgs:
            try:
                batch = batch + self._ready.get_nowait()
            except asyncio.QueueEmpty:
                break
        batch, self._carry = batch[:max_msgs], batch[max_msgs:]
        return batch

    def finished(self) -> bool:
        """With an end sequence: every partition has delivered a message past it."""
        return len(self._past_end) == len(self.consumers)

    async def drained(self) -> bool:
        """Every partition is past the end, or its consumer has nothing pending and nothing in flight."""
        jsm = self._nc.jsm()
        if self._carry or not self._ready.empty():
            return False
        for consumer in self.consumers:
            if consumer.name in self._past_end:
                continue
            with nats_errors(f"reading the state of consumer {consumer.name}"):
                info = await jsm.consumer_info(self._stream, consumer.name)
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    async def acknowledge(self, msgs: Sequence[Msg]) -> None:
        with nats_errors("acknowledging events"):
            for msg in msgs:
                with contextlib.suppress(nats.errors.MsgAlreadyAckdError):  # acknowledged on an earlier try
                    await msg.ack()

    async def retry_later(self, msgs: Sequence[Msg], delay: float) -> None:
        with nats_errors("handing events back for a later delivery"):
            for msg in msgs:
                with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
                    await msg.nak(delay=delay)

    async def still_working(self, msgs: Sequence[Msg]) -> None:
        for msg in msgs:  # only a hint to the server: a lost one costs a redelivery, which is skipped
            with contextlib.suppress(Exception):
                await msg.in_progress()

    def give_back(self, msgs: Sequence[Msg]) -> None:
        """Messages taken but not processed (the caller was interrupted): handed back by ``stop()``."""
        self._returned.extend(msgs)

    async def stop(self) -> None:
        """Stop pulling, then hand back everything taken but not processed: negative acknowledgements
        make those messages available to the next reader at once instead of after the ack wait.

        Order matters: a message handed back while one of our pull requests is still open is
        redelivered into that request, and lost until the ack wait if our interest ends meanwhile.
        So every subscription is drained first, and only then is anything handed back.
        """
        self._stopping.set()
        self._take_ready()  # room in the queue for a pull loop waiting to put
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), HEARTBEAT + 5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._take_ready()
        returned, self._returned = self._returned, []
        await hand_back(returned)

    def _take_ready(self) -> None:
        self._returned.extend(self._carry)
        self._carry = []
        while not self._ready.empty():
            self._returned.extend(self._ready.get_nowait())


class _Pull:
    """One partition's pull: messages in arrival order, and how many the open requests still owe."""

    def __init__(self, fetch_size: int, on_error: Callable[[BaseException], None], consumer: str) -> None:
        self.group: list[Msg] = []
        self.credit = 0
        self.heard = time.monotonic()
        #: the server answered a request with a refusal / with messages or a heartbeat since last asked
        self.refused = False
        self.served = False
        self._fetch_size, self._on_error, self._consumer = fetch_size, on_error, consumer
        self._wake = asyncio.Event()

    async def receive(self, msg: Msg) -> None:
        self.heard = time.monotonic()
        headers = msg.headers or {}
        status = headers.get("Status") if headers and not msg.data else None
        if status is None:
            self.credit -= 1
            self.served = True
            self.group.append(msg)
            if len(self.group) == 1 or len(self.group) >= self._fetch_size:
                self._wake.set()
        elif status == HEARTBEAT_STATUS:
            self.served = True
        elif status in (REQUEST_EXPIRED, CONFLICT) and headers.get("Nats-Pending-Messages"):
            # A request ended (expired, or the consumer's limits): what it still owed is void.
            self.credit = max(0, self.credit - int(headers["Nats-Pending-Messages"]))
        else:
            # Refused outright (JetStream starting or gone, consumer deleted, leadership change):
            # start afresh with a new request, after a pause.
            self.credit, self.refused = 0, True
            self._on_error(BackendUnavailable(self._refusal(status, headers.get("Description", ""))))
        if self.credit <= self._fetch_size // 2:
            self._wake.set()

    def _refusal(self, status: str, description: str) -> str:
        if status == NO_RESPONDERS:
            return (
                f"JetStream did not answer the pull from consumer {self._consumer} (starting up, or the "
                "consumer or its stream is gone); retrying"
            )
        reason = f"{status} {description}".rstrip()
        return f"JetStream refused the pull from consumer {self._consumer} ({reason}); retrying"

    async def arrived(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()


async def hand_back(msgs: Sequence[Msg]) -> None:
    """Negative acknowledgements: the messages go to the next reader now, not after the ack wait."""
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.nak()
