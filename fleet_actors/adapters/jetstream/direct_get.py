"""Reading stored messages in sequence order with direct batch gets: no consumer is created, and it was
the fastest read we measured. Shared by story reads and the archiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

from nats.aio.client import Client
from nats.aio.msg import Msg

from fleet_actors.adapters.jetstream.connection import nats_errors
from fleet_actors.adapters.jetstream.nats_client import FleetNatsClient
from fleet_actors.errors import BackendUnavailable

#: messages a read with headers (read_by_subject) asks for at once
HEADED_READ_BATCH = 1000
#: a read of payloads (read_payloads_by_subject): messages asked for at once, at most this many bytes...
READ_BATCH = 10_000
READ_MAX_BYTES = 2 * 1024 * 1024
#: ... handed to the caller as they arrive, this many at a time
HANDOFF = 1000


async def read_by_subject(
    nc: Client, stream: str, subject_filter: str, first: int, last: int, *, timeout: float, what: str
) -> AsyncGenerator[Msg, None]:
    """Messages matching ``subject_filter`` with ``first <= sequence <= last``, in order.

    Each yielded message carries the server's headers (Nats-Sequence, Nats-Subject, Nats-Time-Stamp).
    ``what`` names the read in errors ("reading story S1").
    """
    if last < first:
        return
    # A callback subscription collecting whole batches: next_msg() costs two tasks per message.
    arrived: list[Msg] = []
    complete = asyncio.Event()

    async def collect(msg: Msg) -> None:
        arrived.append(msg)
        headers = msg.headers or {}
        if headers.get("Status") or headers.get("Nats-Num-Pending") == "0":
            complete.set()

    sub = await nc.subscribe(nc.new_inbox(), cb=collect)
    next_sequence = first
    try:
        with nats_errors(what):
            while next_sequence <= last:
                arrived.clear()
                complete.clear()
                request = json.dumps({"seq": next_sequence, "next_by_subj": subject_filter, "batch": HEADED_READ_BATCH})
                await nc.publish(f"$JS.API.DIRECT.GET.{stream}", request.encode(), reply=sub.subject)
                await _until_complete(complete, arrived, timeout, what)
                for msg in list(arrived):
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status == "204":  # end of this batch
                        break
                    if status == "404":  # nothing more matches
                        return
                    if status:
                        raise BackendUnavailable(f"{what} failed: {status} {headers}")
                    sequence = int(headers["Nats-Sequence"])
                    if sequence > last:
                        return
                    yield msg
                    next_sequence = sequence + 1
                    if headers.get("Nats-Num-Pending") == "0":
                        return
    finally:
        await sub.unsubscribe()


async def _until_complete(complete: asyncio.Event, arrived: list[Msg], timeout: float, what: str) -> None:
    """Wait for the batch's last message; a batch that keeps arriving is slow, one that stops has stalled."""
    while True:
        seen = len(arrived)
        try:
            await asyncio.wait_for(complete.wait(), timeout)
            return
        except TimeoutError:
            if len(arrived) == seen:
                raise BackendUnavailable(f"{what} stalled") from None


async def read_payloads_by_subject(
    nc: Client,
    stream: str,
    subject_filter: str,
    first: int,
    last: int,
    *,
    timeout: float,
    what: str,
    wanted: int | None = None,
) -> AsyncGenerator[tuple[int, list[bytes]], None]:
    """The payloads of the messages matching ``subject_filter`` from sequence ``first`` on, in order, in
    lists of up to ``HANDOFF``: ``(sequence reached, payloads)``, until a batch reaches ``last`` (its
    final batch may run past it) or the answering server has no more.

    The fastest read of a story we measured (docs/benchmarks.md, reads):
    - the server sends no headers (``no_hdr``, nats-server 2.11+), so nats-py parses none;
    - on our connections (``FleetNatsClient``) the messages skip nats-py's dispatch: they reach
      ``take`` as lists, straight from the connection's read loop (a plain nats-py client calls back
      once per message, about three times the read's time);
    - it is asked for large batches (``READ_BATCH`` messages or ``READ_MAX_BYTES``, whichever comes
      first), because each batch costs a round trip in which the server sends nothing (a 10,000-event
      read took 55 ms in batches of 1,000 and 44 ms in one); the bytes bound caps what a read holds
      for a caller that is slower than the server (a gRPC stream to a slow client): the batch
      arriving and the one asked for ahead, 4 MiB (the server sends at least one event a batch);
    - the payloads are handed over as they arrive, ``HANDOFF`` at a time, so the caller decodes the
      first events while the rest are on their way;
    - the next batch is asked for, and the request sent, before the last part of this one is handed
      over, so the caller's decoding overlaps the server's reading.

    Without headers a message carries no sequence: only each batch's end (the server's EOB) says
    where it stopped. So the sequence yielded with a list is where the read has surely reached: the
    last batch's end, and the exact end of the batch with the list that ends it.

    ``wanted`` (how many messages the caller expects to need): the first batch is that many (at
    most ``READ_BATCH``), and the next one is asked for only when the caller comes back for more,
    so a read that stops there costs the server and nats-py no message it does not use; the
    batches after it grow fourfold up to ``READ_BATCH``.
    """
    if last < first:
        return
    #: (payloads, the batch's end status or None for a part of it, messages in the batch so far)
    arrived: asyncio.Queue[tuple[list[bytes], dict[str, str] | None, int]] = asyncio.Queue()
    current: list[bytes] = []
    in_batch = 0
    received = 0

    def take(payloads: list[bytes], status: dict[str, str] | None) -> None:
        """The sink: payloads as they arrive, then a status message's headers (with no_hdr, only the
        server's status messages carry headers: EOB, 404, errors)."""
        nonlocal current, in_batch, received
        received += len(payloads) + (status is not None)
        start = 0
        while start < len(payloads):
            if len(current) == HANDOFF:  # handed over when the next arrives: a batch's end comes with payloads
                arrived.put_nowait((current, None, in_batch))
                current = []
            part = payloads[start : start + HANDOFF - len(current)]
            current += part
            in_batch += len(part)
            start += len(part)
        if status is not None:
            arrived.put_nowait((current, status, in_batch))
            current, in_batch = [], 0

    sinks = nc.sinks if isinstance(nc, FleetNatsClient) else None
    if sinks is not None:  # the payloads come straight from the connection's read loop
        sub = await nc.subscribe(nc.new_inbox())
        sinks[sub._id] = take
    else:

        async def collect(msg: Msg) -> None:
            if msg.headers:
                take([], msg.headers)
            else:
                take([msg.data], None)

        sub = await nc.subscribe(nc.new_inbox(), cb=collect)

    batch = READ_BATCH if wanted is None else max(1, min(wanted, READ_BATCH))

    async def ask(sequence: int) -> None:
        nonlocal batch
        request = {
            "seq": sequence, "next_by_subj": subject_filter, "batch": batch, "max_bytes": READ_MAX_BYTES,
            "no_hdr": True,
        }  # fmt: skip
        # after a first batch of what the caller wanted, batches grow to the full size: a read that
        # stops soon after does not make the server send (and nats-py parse) 10,000 events it drops
        batch = min(READ_BATCH, batch * 4)
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=sub.subject)
        # nats-py only queues it for its flusher task: let that task send it now, not when the caller
        # has finished with what it is handed next
        await asyncio.sleep(0)

    reached = first - 1
    try:
        with nats_errors(what):
            ahead = wanted is None  # ask for the next batch before handing this one's end over
            await ask(first)
            while True:
                while True:  # a batch that keeps arriving is slow, one that stops has stalled
                    seen = received
                    try:
                        payloads, headers, in_batch_then = await asyncio.wait_for(arrived.get(), timeout)
                        break
                    except TimeoutError:
                        if received == seen:
                            raise BackendUnavailable(f"{what} stalled") from None
                if headers is None:
                    yield reached, payloads
                    continue
                status = headers.get("Status")
                if status == "404":  # nothing (more) matches
                    if payloads:  # not seen from a server: it ends a batch that sent any with an EOB
                        yield reached, payloads
                    return
                if status != "204":
                    raise BackendUnavailable(f"{what} failed: {status} {headers}")
                reached = int(headers["Nats-Last-Sequence"])
                # Nats-Num-Pending: how many matched from the request's sequence on, this batch included
                more = reached < last and in_batch_then < int(headers.get("Nats-Num-Pending", "0"))
                if more and ahead:
                    await ask(reached + 1)
                if payloads:
                    yield reached, payloads
                if not more:
                    return
                if not ahead:  # the caller wants more than it expected: read ahead from now on
                    ahead = True
                    await ask(reached + 1)
    finally:
        if sinks is not None:
            sinks.pop(sub._id, None)
        await sub.unsubscribe()
