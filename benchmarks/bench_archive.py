"""Archive throughput and bytes per event for the reference mix; reading a 10,000-event history whose first
half is only in the archive (past the retention horizon) and second half in the stream."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.harness import BenchContext, reference_dataset
from fleet_actors.adapters.archive import Archive, ArchivedEventStore
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.composition import open_archiver
from fleet_actors.loadgen.histories import story_history

SEAM_EVENTS = 10_000


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def _archive_reference(settings) -> dict[str, Any]:
    archiver = await open_archiver(settings)
    try:
        report = await archiver.archive_once()
    finally:
        await archiver.close()
    size = _bytes(Path(settings.archive_url))
    return {
        "archived_events": report.events,
        "archive_events_per_s": round(report.rate, 1),
        "archive_bytes": size,
        "archive_bytes_per_event": round(size / max(report.events, 1), 1),
        "archive_segments": report.segments,
    }


async def _seam(settings) -> dict[str, Any]:
    story_id = f"seam-{uuid.uuid4().hex[:6]}"
    store = await JetStreamEventStore.connect(settings)
    snapshots = JetStreamSnapshotStore(store.connection, settings)
    await snapshots.ensure_stream()
    history = story_history(story_id, SEAM_EVENTS, start=datetime(2026, 1, 1, tzinfo=UTC))
    head = 0
    for first in range(0, SEAM_EVENTS, 1000):
        head = (await store.append(story_id, head, history[first : first + 1000])).last_sequence
        if first + 1000 == SEAM_EVENTS // 2:
            await asyncio.sleep(settings.stream_max_age + 1)  # the first half ages out
    archiver = await open_archiver(settings)
    try:
        await archiver.archive_once()
        # Keep the second half: the horizon sits between the halves.
        retention = await archiver.enforce_retention(now=datetime.now(UTC) - timedelta(seconds=0.5))
    finally:
        await archiver.close()
    composite = ArchivedEventStore(store, Archive(settings.archive_url, settings.stream_name), settings)
    started = time.perf_counter()
    events = await composite.read_all(story_id)
    seconds = time.perf_counter() - started
    assert [e.envelope.version for e in events] == list(range(1, SEAM_EVENTS + 1)), "gap or overlap at the seam"
    started = time.perf_counter()
    await StoryRuntime(story_id, composite).load()
    replay_seconds = time.perf_counter() - started
    await store.close()
    return {
        "seam_history_events": len(events),
        "seam_purged_through_sequence": retention.purged_through,
        "seam_read_full_history_s": round(seconds, 3),
        "seam_full_replay_activation_s": round(replay_seconds, 3),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    _, reference = reference_dataset(ctx)
    archive_dir = ctx.data_dir / f"archive-{uuid.uuid4().hex[:6]}"
    figures = asyncio.run(_archive_reference(reference.replace(archive_url=str(archive_dir))))
    tag = uuid.uuid4().hex[:6]
    seam_settings = ctx.settings.replace(
        stream_name=f"SEAM{tag.upper()}", subject_prefix=f"seam{tag}.events",
        archive_url=str(ctx.data_dir / f"seam-archive-{tag}"), stream_max_age=2.0,
    )  # fmt: skip
    figures.update(asyncio.run(_seam(seam_settings)))
    return figures
