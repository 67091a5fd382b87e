"""Feeds damaged NATS protocol bytes to the bulk reads' frame scanner: run by
test_compiled_decoder_memory.py in a process of its own, with a build of ``_frames.c`` under
AddressSanitizer and UBSan. Each damaged buffer is also cut at a random point, as the socket cuts
it. Usage: python frames_fuzz.py SANITIZED_SO SEED COUNT"""

from __future__ import annotations

import importlib.util
import random
import sys


def main(path: str, seed: int, count: int) -> None:
    spec = importlib.util.spec_from_file_location("fleet_actors.adapters.jetstream._frames", path)
    assert spec is not None and spec.loader is not None
    frames = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(frames)

    from tests.unit.test_nats_client import FRAMES, SINK

    rng = random.Random(seed)
    sinks = {SINK: None}
    kinds = dict.fromkeys((frames.RUN, frames.FOREIGN, frames.INCOMPLETE, frames.DEFER), 0)
    for _ in range(count):
        data = bytearray(b"".join(rng.sample(FRAMES, rng.randint(1, 6))))
        for _ in range(rng.randint(0, 4)):
            if not data:
                break
            at = rng.randrange(len(data))
            operation = rng.random()
            if operation < 0.4:
                data[at] = rng.choice(b" \t\r\n0123456789MSGH-+" + bytes([rng.randrange(256)]))
            elif operation < 0.7:
                del data[at : at + rng.randint(1, 12)]
            else:
                data[at:at] = rng.choice([b"\r\n", b" ", b"9" * rng.randint(1, 20), b"MSG _I 5 ", b"HMSG _I 5 3 "])
        data = data[: rng.randint(0, len(data))]
        while data:  # as the parser takes it: a run or a frame at a time
            kind, end, _sid, payloads, header, size = frames.scan(data, sinks, rng.randint(1, 8))
            kinds[kind] += 1
            assert 0 <= end <= len(data) and size == sum(map(len, payloads))
            assert header is None or (kind == frames.RUN and isinstance(header, bytes))
            if kind in (frames.INCOMPLETE, frames.DEFER) or end == 0:
                break
            del data[:end]
    print(f"no memory error; kinds seen: {kinds}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
