"""Bulk reads' sinks (adapters/jetstream/nats_client.py): whatever way the bytes arrive (split at
any point, other subscriptions' messages and the server's PINGs between them, frames the scanner
leaves to nats-py), a sink gets its payloads and statuses in the order the server sent them, and
everything else reaches nats-py as before. Checked with the compiled scanner, and with nats-py's
parser alone (the install without a C compiler)."""

from __future__ import annotations

import itertools
import random

import pytest
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from fleet_actors.adapters.jetstream import nats_client
from fleet_actors.adapters.jetstream.nats_client import FleetNatsClient

_frames = nats_client._frames
compiled = pytest.mark.skipif(not nats_client.COMPILED, reason="the frame scanner was not built")

SINK, OTHER = 5, 9


def msg(sid: int, payload: bytes, subject: bytes = b"_INBOX.a", reply: bytes = b"") -> bytes:
    reply_token = b" " + reply if reply else b""
    return b"MSG %s %d%s %d\r\n%s\r\n" % (subject, sid, reply_token, len(payload), payload)


def status(sid: int, code: bytes, last: int) -> bytes:
    header = b"NATS/1.0 %s\r\nNats-Num-Pending: 0\r\nNats-Last-Sequence: %d\r\n\r\n" % (code, last)
    return b"HMSG _INBOX.a %d %d %d\r\n%s\r\n" % (sid, len(header), len(header), header)


class Recording(FleetNatsClient):
    """Records, in order, what reaches the sink and what reaches nats-py's handlers (no socket)."""

    def __init__(self, parser: type[Parser] | None = None) -> None:
        super().__init__()
        if parser is not None:
            self._ps = parser(self)
        self.seen: list[tuple] = []
        self.sinks[SINK] = self.sink

    def sink(self, payloads: list[bytes], headers: dict[str, str] | None) -> None:
        self.seen += [("payload", p) for p in payloads]
        if headers is not None:
            self.seen.append(("status", headers["Status"], headers["Nats-Last-Sequence"]))

    async def _process_msg(self, sid, subject, reply, data, headers) -> None:
        if sid in self.sinks:
            await super()._process_msg(sid, subject, reply, data, headers)
        else:
            self.seen.append(("other", sid, subject, reply, data))

    async def _process_ping(self) -> None:
        self.seen.append(("PING",))

    async def _process_info(self, info, initial_connection=False) -> None:
        self.seen.append(("INFO", info["server_id"]))


FRAMES = [
    msg(SINK, b"first"),
    msg(SINK, b""),  # an empty payload
    msg(SINK, b"a\r\nMSG _INBOX.a 5 3\r\nfake"),  # a payload that looks like frames
    b"PING\r\n",
    msg(OTHER, b"for another subscription", reply=b"$JS.ACK.x"),
    msg(SINK, b"tabs", subject=b"_INBOX.a\t").replace(b"MSG _INBOX.a\t 5", b"MSG\t_INBOX.a\t5"),
    b"+OK\r\n",
    msg(SINK, b"with a reply", reply=b"reply.to"),
    b"HMSG _INBOX.a 5 0 10\r\nno headers\r\n",  # headed, with none: a plain message to nats-py
    status(SINK, b"204 EOB", 12),
    msg(SINK, bytes(range(256)) * 40),  # the next batch, right after the status
    msg(SINK, "é".encode(), subject="_INBOX.é".encode()),  # not ASCII: left to nats-py's parser
    b'INFO {"server_id":"S2","max_payload":1048576}\r\n',
    msg(OTHER, b"x" * 5000),
    *[msg(SINK, b"e%d" % i) for i in range(30)],
    status(SINK, b"404", 0),
]
WIRE = b"".join(FRAMES)
#: every point within 40 bytes of a frame's start or end (control lines, headers, payloads' ends)
CUTS = sorted(
    {
        edge + offset
        for edge in itertools.accumulate(len(frame) for frame in FRAMES)
        for offset in range(-40, 41)
        if 0 < edge + offset < len(WIRE)
    }
)

EXPECTED = [
    ("payload", b"first"),
    ("payload", b""),
    ("payload", b"a\r\nMSG _INBOX.a 5 3\r\nfake"),
    ("PING",),
    ("other", OTHER, b"_INBOX.a", b"$JS.ACK.x", b"for another subscription"),
    ("payload", b"tabs"),
    ("payload", b"with a reply"),
    ("payload", b"no headers"),
    ("status", "204", "12"),
    ("payload", bytes(range(256)) * 40),
    ("payload", "é".encode()),
    ("INFO", "S2"),
    ("other", OTHER, b"_INBOX.a", b"", b"x" * 5000),
    *[("payload", b"e%d" % i) for i in range(30)],
    ("status", "404", "0"),
]

PARSERS = {"nats-py's parser": Parser, **({"scanner": None} if nats_client.COMPILED else {})}


async def feed(client: Recording, chunks: list[bytes]) -> list[tuple]:
    for chunk in chunks:
        await client._ps.parse(chunk)
    assert not client._ps.buf  # nothing left over
    return client.seen


def test_the_scanner_is_built():
    """Where a C compiler is present (as on CI), the install builds the scanner: a build without it
    reads through nats-py's parser, slower, and this fails so that it is noticed."""
    assert nats_client.COMPILED, "fleet_actors.adapters.jetstream._frames was not built: pip install needs gcc"


async def test_the_wire_fixture_has_the_frames_it_says():
    assert await feed(Recording(Parser), [WIRE]) == EXPECTED  # nats-py's parser alone, in one piece


@pytest.mark.parametrize("parser", PARSERS)
async def test_every_split_of_the_bytes_gives_the_same_order(parser):
    for cut in CUTS:
        assert await feed(Recording(PARSERS[parser]), [WIRE[:cut], WIRE[cut:]]) == EXPECTED, cut


@pytest.mark.parametrize("parser", PARSERS)
async def test_bytes_arriving_one_at_a_time_or_in_random_pieces_give_the_same_order(parser, monkeypatch):
    assert await feed(Recording(PARSERS[parser]), [WIRE[i : i + 1] for i in range(len(WIRE))]) == EXPECTED
    monkeypatch.setattr(nats_client, "RUN_LIMIT", 3)  # runs cut short: the same order
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(WIRE)), rng.randint(1, 40)))
        chunks = [WIRE[a:b] for a, b in zip([0, *cuts], [*cuts, len(WIRE)], strict=True)]
        assert await feed(Recording(PARSERS[parser]), chunks) == EXPECTED


@compiled
def test_the_scanner_takes_the_sink_s_messages_in_runs_and_nothing_else():
    sinks = {SINK: None}
    many = msg(SINK, b"a") + msg(SINK, b"bb") + msg(SINK, b"ccc")
    assert _frames.scan(bytearray(many), sinks, 100) == (_frames.RUN, len(many), SINK, [b"a", b"bb", b"ccc"], None, 6)
    assert _frames.scan(bytearray(many), sinks, 2)[:4] == (
        _frames.RUN,
        len(msg(SINK, b"a") + msg(SINK, b"bb")),
        SINK,
        [b"a", b"bb"],
    )
    # a run ends before another subscription's message, which is one frame for nats-py
    mixed = msg(SINK, b"a") + msg(OTHER, b"b") + msg(SINK, b"c")
    assert _frames.scan(bytearray(mixed), sinks, 100)[:4] == (_frames.RUN, len(msg(SINK, b"a")), SINK, [b"a"])
    assert _frames.scan(bytearray(mixed[len(msg(SINK, b"a")) :]), sinks, 100)[:2] == (
        _frames.FOREIGN,
        len(msg(OTHER, b"b")),
    )
    # a status ends the run, with its header
    ended = msg(SINK, b"a") + status(SINK, b"204 EOB", 3)
    kind, end, sid, payloads, header, _ = _frames.scan(bytearray(ended + msg(SINK, b"next")), sinks, 9)
    assert (kind, end, sid, payloads) == (_frames.RUN, len(ended), SINK, [b"a"])
    assert header.startswith(b"NATS/1.0 204 EOB\r\n")
    # what has not fully arrived waits, whoever's it is
    for partial in (msg(SINK, b"abc")[:-1], msg(OTHER, b"abc")[:-2], b"MSG _INBOX.a 5", b"PING\r"):
        assert _frames.scan(bytearray(partial), sinks, 9)[0] == _frames.INCOMPLETE, partial
    # other operations, and other subscriptions' messages, are nats-py's: all of them up to a sink's
    assert _frames.scan(bytearray(b"PONG\r\nMSG x 5 1\r\na\r\n"), sinks, 9)[:2] == (_frames.FOREIGN, 6)
    theirs = b"PING\r\n" + msg(OTHER, b"b") + b"+OK\r\n" + msg(OTHER, b"c", reply=b"r")
    assert _frames.scan(bytearray(theirs + msg(SINK, b"a")), sinks, 9)[:4] == (_frames.FOREIGN, len(theirs), -1, [])
    assert _frames.scan(bytearray(theirs + msg(OTHER, b"d")[:-1]), sinks, 9)[:2] == (_frames.FOREIGN, len(theirs))
    assert _frames.scan(bytearray(theirs + b"MSG x y 1\r\n"), sinks, 9)[:2] == (_frames.FOREIGN, len(theirs))


async def outcome(parser: type[Parser] | None, data: bytes) -> tuple:
    client = Recording(parser)
    try:
        await client._ps.parse(data)
        error = None
    except Exception as refused:  # whatever nats-py does with it: ProtocolError, IndexError (short headers)
        error = (type(refused), refused.args)
    return error, client.seen, bytes(client._ps.buf), client._ps.state


@compiled
@pytest.mark.parametrize(
    "line",
    [
        b"MSG _INBOX.a 5 1 2 3\r\n",  # too many tokens
        b"MSG _INBOX.a five 3\r\nabc\r\n",  # a sid that is no number
        b"MSG _INBOX.a 5 -3\r\n",
        b"MSG _INBOX.a 5 99999999999999999999\r\nabc",  # a size beyond any buffer
        b"HMSG _INBOX.a 5 10 3\r\nabc\r\n",  # headers longer than the whole
        b"MSG " + b"x" * 5000 + b"\r\n",  # a control line longer than nats-py allows
    ],
)
async def test_frames_the_scanner_does_not_understand_are_left_to_nats_py(line):
    assert _frames.scan(bytearray(line), {SINK: None}, 9)[0] == _frames.DEFER
    data = msg(SINK, b"ok") + line
    assert await outcome(None, data) == await outcome(Parser, data)
    assert (await outcome(None, b"MSG _INBOX.a five 3\r\nabc\r\n"))[0] == (ProtocolError, ("nats: malformed MSG",))


@compiled
def test_the_scanner_checks_its_arguments():
    with pytest.raises(ValueError):
        _frames.scan(bytearray(b""), {}, 0)
    with pytest.raises(TypeError):
        _frames.scan(bytearray(b""), [], 1)
    with pytest.raises(TypeError):
        _frames.scan("text", {}, 1)
