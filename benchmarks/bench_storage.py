"""Bytes per event on disk for the 1,000,000-event reference mix, and what they are made of."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

import nats

from benchmarks.harness import BenchContext, reference_dataset
from fleet_actors.codec import encode_event
from fleet_actors.loadgen.histories import story_history


def _directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def _stream_state(settings) -> tuple[int, int]:
    nc = await nats.connect(settings.nats_url)
    info = await nc.jsm().stream_info(settings.stream_name)
    await nc.close()
    return info.state.messages, info.state.bytes


def run(ctx: BenchContext) -> dict[str, Any]:
    server, settings = reference_dataset(ctx)
    messages, logical_bytes = asyncio.run(_stream_state(settings))
    stream_dirs = [p for p in Path(server.data_dir).rglob(settings.stream_name) if p.is_dir()]
    on_disk = sum(_directory_bytes(p) for p in stream_dirs)
    # JetStream compresses a block (S2) when it is sealed; the active block stays uncompressed until
    # full. The sealed blocks are what a large stream is made of.
    blocks = sorted((p for d in stream_dirs for p in d.rglob("*.blk")), key=lambda p: int(p.stem))
    logical_per_event = logical_bytes / messages
    in_active = blocks[-1].stat().st_size / logical_per_event if blocks else 0
    sealed = sum(p.stat().st_size for p in blocks[:-1])
    sealed_per_event = sealed / (messages - in_active) if blocks[:-1] and messages > in_active else None
    from datetime import UTC, datetime

    sample = story_history("ref-0000000", 100, start=datetime(2026, 1, 1, tzinfo=UTC))
    payloads = [len(encode_event(e)) for e in sample]
    subject = len(settings.story_subject("ref-0000000", "subtask_updated")) + 3  # + ".{partition}"
    return {
        "events": messages,
        "bytes_on_disk": on_disk,
        "bytes_per_event_on_disk": round(on_disk / messages, 1),
        "bytes_per_event_in_sealed_blocks": round(sealed_per_event, 1) if sealed_per_event else "n/a",
        "blocks": len(blocks),
        "bytes_per_event_logical_uncompressed": round(logical_bytes / messages, 1),
        "avg_protobuf_envelope_bytes": round(statistics.fmean(payloads), 1),
        "subject_bytes": subject,
        "msg_id_header_bytes": len("Nats-Msg-Id: ") + len(sample[0].event_id),
        "compression": "S2 (stream setting)",
        "notes": "; ".join(ctx.notes),
    }
