"""The event store on JetStream: one subject per story and event type, conditional atomic appends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from fleet_actors.adapters.jetstream.connection import (
    ERR_BATCH_DUPLICATE,
    ERR_BATCH_INCOMPLETE,
    ERR_BATCH_TOO_MANY_INFLIGHT,
    ERR_WRONG_LAST_SEQUENCE,
    connect_nats,
    ensure_event_stream,
    nats_errors,
    translate_nats_error,
)
from fleet_actors.adapters.jetstream.direct_get import read_by_subject, read_payloads_by_subject
from fleet_actors.adapters.jetstream.story_watch import StoryWatch
from fleet_actors.codec import decode_event, decode_events, encode_event
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.errors import (
    AppendOutcomeUnknown,
    BackendUnavailable,
    ConcurrencyConflict,
    ConnectionInterrupted,
    InvalidCommand,
    StoryError,
)
from fleet_actors.observability import tracing
from fleet_actors.observability.metrics import metrics
from fleet_actors.ports.event_store import AppendResult, EventStore, StoredEvent
from fleet_actors.settings import Settings
from fleet_actors.urls import redact_url

H_MSG_ID = "Nats-Msg-Id"
H_EXPECTED_SEQ = "Nats-Expected-Last-Subject-Sequence"
H_EXPECTED_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
H_BATCH_ID = "Nats-Batch-Id"
H_BATCH_SEQ = "Nats-Batch-Sequence"
H_BATCH_COMMIT = "Nats-Batch-Commit"

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH = 1000
#: reads that a replica behind the leader ended early: how often to read on, and the first pause
READ_BEHIND_RETRIES = 5
READ_BEHIND_PAUSE = 0.05
#: the bound of a read begun before the story's head is known (above any stream sequence)
UNKNOWN_HEAD = 2**63 - 1
APPEND_ATTEMPTS = 3
#: how often an append waiting for the client to reconnect looks again
CONNECTION_POLL = 0.05
BATCH_REFUSALS = 20


class JetStreamEventStore(EventStore):
    def __init__(self, nc: Client, settings: Settings, *, owns_connection: bool = False) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=settings.nats_timeout)
        self._jsm = nc.jsm(timeout=settings.nats_timeout)
        self._settings = settings
        self._owns_connection = owns_connection

    @classmethod
    async def connect(cls, settings: Settings, *, update_stream: bool = True) -> JetStreamEventStore:
        """Connect and declare the stream; readers pass ``update_stream=False`` (see ensure_event_stream)."""
        nc = await connect_nats(settings)
        try:
            await ensure_event_stream(nc, settings, update_existing=update_stream)
        except BaseException:
            await nc.close()
            raise
        return cls(nc, settings, owns_connection=True)

    @property
    def connection(self) -> Client:
        return self._nc

    async def ping(self, timeout: float) -> None:
        """Raise unless JetStream answers within ``timeout`` seconds.

        Not ``flush(timeout)``: a flush that times out leaves its PONG future queued, and the late
        PONG after a stall ends nats-py's read loop for good (no reconnect). A request's late reply is
        simply dropped. A connection that nats-py closed anyway is opened again here (when this store
        owns it), so a long-running reader such as the gateway recovers by itself."""
        reading = getattr(self._nc, "_reading_task", None)  # nats-py has no public word for it
        if self._owns_connection and not self._nc.is_closed and reading is not None and reading.done():
            # The read loop ended without nats-py closing or reconnecting (its status still says
            # connected, and its flush() then 'succeeds' without a round trip): start afresh.
            log.warning("the NATS connection's read loop has ended; connecting again")
            with contextlib.suppress(Exception):
                await self._nc.close()
        if self._nc.is_closed and self._owns_connection:
            log.warning("the NATS connection was closed under us; connecting again")
            nc = await connect_nats(self._settings)
            self._nc, self._js, self._jsm = (
                nc,
                nc.jetstream(timeout=self._settings.nats_timeout),
                nc.jsm(timeout=self._settings.nats_timeout),
            )
        if not self._nc.is_connected:
            raise ConnectionInterrupted("the NATS connection is down (reconnecting)")
        with nats_errors("checking that JetStream answers"):
            await self._nc.request("$JS.API.INFO", b"", timeout=timeout)

    async def watch(self, story_id: str, *, from_start: bool) -> StoryWatch:
        """The story's events as they are appended (from its first event with ``from_start``)."""
        return await StoryWatch.open(self._nc, self._settings, story_id, from_start=from_start)

    async def close(self) -> None:
        if self._owns_connection and not self._nc.is_closed:
            await self._nc.close()

    # --- writing ----------------------------------------------------------------------------

    async def append(self, story_id: str, expected_sequence: int, events: Sequence[EventEnvelope]) -> AppendResult:
        started, outcome = time.perf_counter(), "error"
        with tracing.span("jetstream.append"):
            try:
                result = await self._append(story_id, expected_sequence, events)
                outcome = "ok"
                return result
            except ConcurrencyConflict:
                outcome = "conflict"
                raise
            finally:
                metrics().append_duration.observe(time.perf_counter() - started, outcome)

    async def _append(self, story_id: str, expected_sequence: int, events: Sequence[EventEnvelope]) -> AppendResult:
        if not events:
            return AppendResult(expected_sequence)
        if len(events) > MAX_BATCH:
            raise InvalidCommand(f"at most {MAX_BATCH} events can be appended at once", field="changes")
        messages = [(self._settings.story_subject(story_id, e.event_type), encode_event(e), e.event_id) for e in events]
        if not self._nc.is_connected:
            await self._wait_for_connection(story_id)
        timeouts = refusals = 0
        while True:
            try:
                seq = await self._publish(story_id, expected_sequence, messages)
                return AppendResult(seq)
            except nats.js.errors.APIError as error:
                if error.err_code in (ERR_BATCH_TOO_MANY_INFLIGHT, ERR_BATCH_INCOMPLETE):
                    # Refused as a whole (the server's cap on concurrent batches): nothing was
                    # stored, so sending it again under a new batch id is safe.
                    refusals += 1
                    if refusals >= BATCH_REFUSALS:
                        raise BackendUnavailable(
                            f"JetStream keeps refusing batches for story {story_id!r} (too many in flight)"
                        ) from None
                    await asyncio.sleep(random.uniform(0.005, 0.05) * refusals)
                    continue
                if error.err_code not in (ERR_WRONG_LAST_SEQUENCE, ERR_BATCH_DUPLICATE):
                    raise translate_nats_error(error, f"appending to story {story_id}") from None
                # A retry of an append that landed looks like a conflict (single events: the
                # sequence check runs before de-duplication) or a duplicate batch. The story's
                # head tells them apart; if others appended since, the caller's catch-up will
                # find its own events by command id.
                head_seq, head_id = await self._head(story_id)
                if head_id == events[-1].event_id:
                    return AppendResult(head_seq, already_stored=True, after_timeout=timeouts > 0)
                raise ConcurrencyConflict(
                    f"story {story_id!r} was changed by another writer "
                    f"(expected last sequence {expected_sequence}, found {head_seq})",
                    expected=expected_sequence,
                    actual=head_seq,
                ) from None
            except (TimeoutError, nats.errors.TimeoutError, nats.errors.ConnectionClosedError):
                timeouts += 1
                if timeouts >= APPEND_ATTEMPTS or not await self._connected_within(self._settings.nats_timeout):
                    break  # a connection that stays lost cannot answer the attempts left, nor the check below
                await asyncio.sleep(0.2 * timeouts)
            except StoryError:
                raise
            except Exception as error:
                raise translate_nats_error(error, f"appending to story {story_id}") from None
        # Every attempt timed out: maybe stored, maybe not. Check once more before giving up.
        head_id, head_seq = "", 0
        if self._nc.is_connected:
            with contextlib.suppress(StoryError):
                head_seq, head_id = await self._head(story_id)
        if head_id == events[-1].event_id:
            return AppendResult(head_seq, already_stored=True, after_timeout=True)
        if not self._nc.is_connected:
            raise AppendOutcomeUnknown(
                f"the connection to NATS was lost while appending to story {story_id!r}, so the events may "
                "or may not have been stored; retry the command with the same command id"
            )
        raise AppendOutcomeUnknown(
            f"appending to story {story_id!r} timed out; retry the command with the same command id"
        )

    async def _wait_for_connection(self, story_id: str) -> None:
        """While the client reconnects, a publish waits in its buffer and may land any time later, which
        leaves the outcome open: so nothing is sent until the connection is back, and an append that
        cannot wait that long fails with a definite outcome (not after three timed-out attempts)."""
        if not await self._connected_within(self._settings.nats_timeout):
            raise BackendUnavailable(
                f"cannot reach NATS at {redact_url(self._settings.nats_url)}: nothing was appended to story "
                f"{story_id!r}; retry the command"
            )

    async def _connected_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self._nc.is_connected:
            if self._nc.is_closed or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(CONNECTION_POLL)
        return True

    async def _publish(self, story_id: str, expected_sequence: int, messages: list[tuple[str, bytes, str]]) -> int:
        condition = {
            H_EXPECTED_SEQ: str(expected_sequence),
            H_EXPECTED_SUBJECT: self._settings.story_filter(story_id),
        }
        if len(messages) == 1:
            subject, data, msg_id = messages[0]
            single = {**condition, H_MSG_ID: msg_id}
            tracing.inject_headers(single)  # the projector continues the command's trace
            ack = await self._js.publish(subject, data, headers=single)
            return ack.seq
        # An atomic batch: all events of one command or none; conditional on the first message.
        batch_id = base64.urlsafe_b64encode(os.urandom(9)).decode()
        last = len(messages)
        for index, (subject, data, msg_id) in enumerate(messages, start=1):
            headers = {H_BATCH_ID: batch_id, H_BATCH_SEQ: str(index), H_MSG_ID: msg_id}
            tracing.inject_headers(headers)
            if index == 1:
                headers.update(condition)
            if index == last:
                headers[H_BATCH_COMMIT] = "1"
                ack = await self._js.publish(subject, data, headers=headers)
                return ack.seq
            if index == 1:
                reply = await self._nc.request(subject, data, headers=headers, timeout=self._settings.nats_timeout)
                if reply.data:  # an empty reply means "staged"; anything else is a refusal
                    refusal = json.loads(reply.data).get("error")
                    if refusal:
                        raise nats.js.errors.APIError.from_error(refusal)
            else:
                await self._nc.publish(subject, data, headers=headers)
        raise AssertionError("unreachable")

    # --- reading ----------------------------------------------------------------------------

    async def _head(self, story_id: str) -> tuple[int, str]:
        """The story's last sequence and message id, from the stream leader: they decide whether an
        append landed and whether a story exists, so a replica that is behind must not answer (on a
        replicated stream any replica answers a direct get)."""
        with nats_errors(f"reading the head of story {story_id}"):
            try:
                msg = await self._jsm.get_last_msg(
                    self._settings.stream_name, self._settings.story_filter(story_id), direct=False
                )
            except nats.js.errors.NotFoundError:
                return 0, ""
        return msg.seq or 0, (msg.headers or {}).get(H_MSG_ID, "")

    async def last_sequence(self, story_id: str) -> int:
        return (await self._head(story_id))[0]

    async def head_version(self, story_id: str) -> int:
        # Any replica may answer: a fresh read needs what was acknowledged before it, and an append
        # is acknowledged once a quorum stored it, which a direct get of the last message sees.
        with nats_errors(f"reading the head of story {story_id}"):
            try:
                msg = await self._jsm.get_last_msg(
                    self._settings.stream_name, self._settings.story_filter(story_id), direct=True
                )
            except nats.js.errors.NotFoundError:
                return 0
        return decode_event(msg.data or b"").version

    async def read(self, story_id: str, after_sequence: int = 0) -> AsyncIterator[StoredEvent]:
        async for sequence, data in self._read_raw(story_id, after_sequence):
            yield StoredEvent(decode_event(data), sequence)

    async def read_envelopes(
        self, story_id: str, after_sequence: int = 0, *, wanted: int | None = None
    ) -> AsyncGenerator[list[EventEnvelope], None]:
        def batches(first: int, head: int) -> AsyncGenerator[tuple[int, list[bytes]], None]:
            return read_payloads_by_subject(
                self._nc, self._settings.stream_name, self._settings.story_filter(story_id), first, head,
                timeout=self._settings.nats_timeout, what=f"reading story {story_id!r}", wanted=wanted,
            )  # fmt: skip

        async with contextlib.aclosing(self._to_head(story_id, after_sequence, batches)) as read:
            async for _, payloads in read:
                yield decode_events(payloads)

    async def first_sequence(self, story_id: str, after_sequence: int = 0) -> int:
        """The sequence of the story's first event after ``after_sequence`` in the stream (0: none)."""
        with nats_errors(f"reading story {story_id}"):
            try:
                msg = await self._jsm.get_msg(
                    self._settings.stream_name, after_sequence + 1, self._settings.story_filter(story_id),
                    direct=True, next=True,
                )  # fmt: skip
            except nats.js.errors.NotFoundError:
                return 0
        return msg.seq or 0

    async def story_ids(self) -> list[str]:
        """The subjects holding a creation event."""
        with nats_errors(f"listing the stories of stream {self._settings.stream_name}"):
            info = await self._nc.jsm().stream_info(
                self._settings.stream_name, subjects_filter=f"{self._settings.subject_prefix}.*.context_created.>"
            )
        return sorted({subject.rsplit(".", 3)[-3] for subject in (info.state.subjects or {})})

    async def read_raw(self, story_id: str, after_sequence: int = 0) -> AsyncGenerator[tuple[int, bytes], None]:
        """Undecoded events, for tools that must step over an event this code cannot read."""
        async for item in self._read_raw(story_id, after_sequence):
            yield item

    async def _read_raw(self, story_id: str, after_sequence: int) -> AsyncIterator[tuple[int, bytes]]:
        async def messages(first: int, head: int) -> AsyncGenerator[tuple[int, bytes], None]:
            found = read_by_subject(
                self._nc, self._settings.stream_name, self._settings.story_filter(story_id), first, head,
                timeout=self._settings.nats_timeout, what=f"reading story {story_id!r}",
            )  # fmt: skip
            async with contextlib.aclosing(found):
                async for msg in found:
                    yield int((msg.headers or {})["Nats-Sequence"]), msg.data  # direct gets always carry it

        async with contextlib.aclosing(self._to_head(story_id, after_sequence, messages)) as read:
            async for item in read:
                yield item

    async def _to_head(
        self, story_id: str, after_sequence: int, read: Callable[[int, int], AsyncGenerator[tuple[int, T], None]]
    ) -> AsyncGenerator[tuple[int, T], None]:
        """``read(first, last)``'s items (each with the sequence it reaches), at least up to the head the
        leader reports: any replica answers a direct get, and one that is behind ends the read early. It
        catches up within moments; until then, read again from where it ended.

        The head is asked for while the first read runs, not before it: one round trip less before
        the first events (~1 ms of a 10,000-event history's 60). That read may go past the head
        reported, to events appended since: committed events too, as a read begun a moment later
        would have returned."""
        head_lookup = asyncio.ensure_future(self.last_sequence(story_id))
        try:
            head = UNKNOWN_HEAD
            for attempt in range(READ_BEHIND_RETRIES):
                # closed at once if the caller stops early
                async with contextlib.aclosing(read(after_sequence + 1, head)) as items:
                    async for reached, item in items:
                        after_sequence = reached
                        yield reached, item
                head = await head_lookup
                if after_sequence >= head:
                    return
                await asyncio.sleep(READ_BEHIND_PAUSE * (attempt + 1))
            raise BackendUnavailable(
                f"reading story {story_id!r}: the replicas that answered stay behind the stream leader "
                f"(at sequence {after_sequence}, the story's head is {head})"
            )
        finally:
            if not head_lookup.done():
                head_lookup.cancel()
            elif not head_lookup.cancelled():
                head_lookup.exception()  # retrieved: a read stopped early must not log it as lost
