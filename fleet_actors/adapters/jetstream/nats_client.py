"""nats-py's client, with the messages of bulk reads handed straight to their reader.

A read of 10,000 stored events spent about two thirds of its time in nats-py passing each message
on, one at a time: its parser's regular expressions, a ``Msg``, the subscription's queue, its task
and a callback coroutine (docs/benchmarks.md, "Reads past nats-py's dispatch"). A bulk read
(``direct_get.read_payloads_by_subject``) registers a *sink* for its subscription instead of a
callback: a plain function that gets the payloads as lists, and a status message's headers, in
the order they arrive, synchronously, from the connection's read loop.

- The compiled scanner (``_frames.c``) cuts a sink's messages out of the read buffer in one pass;
  every other frame (other subscriptions, PING, INFO, errors), and anything it is unsure of, is
  parsed by nats-py as before.
- Without the scanner (no C compiler at install), a sink's messages still skip the ``Msg``, queue
  and task: nats-py parses them and ``_process_msg`` hands them to the sink.

Both hooks are nats-py internals (``Client._ps``, ``Client._process_msg``, ``Parser.parse``);
pyproject.toml pins nats-py, and tests/unit/test_nats_client.py feeds the parser split frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

log = logging.getLogger(__name__)

try:
    from fleet_actors.adapters.jetstream import _frames  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: nats-py parses every message
    _frames = None
    log.warning(
        "fleet_actors.adapters.jetstream._frames was not built (no C compiler at install): reads of "
        "stored events pass through nats-py's parser, about half as fast; reinstall with gcc"
    )

#: the scanner is built (bulk reads skip nats-py's parser)
COMPILED: bool = _frames is not None

#: a sink: payloads in arrival order; then, once, the headers of the status message that ends a batch
Sink = Callable[[list[bytes], dict[str, str] | None], None]

#: payloads handed to a sink at once, at most
RUN_LIMIT = 1000


class FleetNatsClient(Client):
    """A ``nats.aio.client.Client`` whose subscriptions may have a sink (``sinks[sid]``) in place of
    a callback. A sink must not block: it runs in the connection's read loop."""

    def __init__(self) -> None:
        super().__init__()
        self.sinks: dict[int, Sink] = {}
        if _frames is not None:
            self._ps = _BulkParser(self)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        sink = self.sinks.get(sid)
        if sink is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        if headers:
            sink([], await self._process_headers(headers))
        else:
            sink([data], None)


class _BulkParser(Parser):
    """nats-py's parser, which first lets the scanner take the frames of subscriptions with a sink."""

    nc: FleetNatsClient

    async def parse(self, data: bytes = b"") -> None:
        sinks = self.nc.sinks
        if not sinks or self.state != AWAITING_CONTROL_LINE:
            await super().parse(data)
            return
        buf = self.buf
        buf.extend(data)
        stats = self.nc.stats
        while buf:
            kind, end, sid, payloads, header, size = _frames.scan(buf, sinks, RUN_LIMIT)
            if kind == _frames.RUN:
                del buf[:end]
                stats["in_msgs"] += len(payloads) + (header is not None)
                stats["in_bytes"] += size
                sinks[sid](payloads, None if header is None else await self.nc._process_headers(header))
            elif kind == _frames.INCOMPLETE:
                return
            elif kind == _frames.FOREIGN:  # frames for nats-py: the rest waits aside meanwhile
                rest = buf[end:]
                del buf[end:]
                await super().parse()
                if self.buf is not buf:  # reset by a reconnection meanwhile: the rest is stale
                    return
                buf.extend(rest)
                if not sinks or self.state != AWAITING_CONTROL_LINE:
                    await super().parse()
                    return
            else:  # DEFER: not ours to judge
                await super().parse()
                return
