"""Feeds damaged events and snapshots to the compiled decoder: run by test_compiled_decoder_memory.py
in a process of its own, with a build of the decoder under AddressSanitizer and UBSan loaded in
place of the installed one. Usage: python wire_fuzz.py SANITIZED_SO SEED COUNT"""

from __future__ import annotations

import importlib.util
import random
import sys
from datetime import UTC, datetime


def main(path: str, seed: int, count: int) -> None:
    spec = importlib.util.spec_from_file_location("fleet_actors.codec._wire", path)
    assert spec is not None and spec.loader is not None
    sanitized = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sanitized)
    sys.modules["fleet_actors.codec._wire"] = sanitized  # what codec/wire.py imports from now on

    from fleet_actors.codec import events, state, wire
    from fleet_actors.codec.events import decode_event_with_protobuf, encode_event
    from fleet_actors.codec.state import decode_snapshot_with_protobuf, encode_state
    from fleet_actors.domain.state import StoryState
    from fleet_actors.domain.story import StateBuilder
    from fleet_actors.loadgen.histories import story_history

    assert wire._wire is sanitized
    history = story_history("S-fuzz", 300, start=datetime(2026, 1, 1, tzinfo=UTC))
    samples = [encode_event(envelope) for envelope in history]
    builder = StateBuilder(StoryState("S-fuzz"))
    for envelope in history:
        builder.add(envelope)
    snapshot = encode_state(builder.state(), 300)
    rng = random.Random(seed)
    decoded = 0
    for i in range(count):
        base = snapshot if i % 4 == 0 else samples[rng.randrange(len(samples))]
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            operation = rng.random()
            if operation < 0.5 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif operation < 0.7:
                del data[rng.randrange(len(data) + 1) :]
            elif operation < 0.85:
                at = rng.randrange(len(data) + 1)
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
            else:
                data += b"\xff" * rng.randint(1, 12)
        damaged = bytes(data)
        shape = state._SNAPSHOT_SHAPE if base is snapshot else events._ENVELOPE_SHAPE
        value = sanitized.decode(shape, damaged)
        if value is not None:  # what it answers, the protobuf path answers too
            decoded += 1
            if base is snapshot:
                if value["schema_version"] == state.STATE_SCHEMA_VERSION and value["story_id"]:  # as decode_snapshot
                    assert decode_snapshot_with_protobuf(damaged)[1] == value["last_sequence"]
            else:
                assert value == decode_event_with_protobuf(damaged)
        if i % 64 == 0:
            sanitized.decode_all(events._ENVELOPE_SHAPE, [damaged, base])
    print(f"{decoded} of {count} damaged inputs decoded, no memory error")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
