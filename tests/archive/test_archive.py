"""Archive segments: verify finds damage, a killed run resumes without duplicates, export reads both parts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fleet_actors.adapters.jetstream.retention import StreamRetention
from fleet_actors.cli import archive_cmd
from fleet_actors.codec import decode_event
from fleet_actors.composition import archiver_on, export_events
from fleet_actors.errors import ArchiveCorrupted
from fleet_actors.loadgen.seed import seed
from tests.archive.conftest import Fleet
from tests.integration.conftest import write_story


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    archive_cmd.register(commands)
    events = commands.add_parser("events").add_subparsers(dest="events_command", required=True)
    archive_cmd.add_export(events)
    args = parser.parse_args(argv)
    return int(args.func(args))


def cli_settings(fleet: Fleet) -> list[str]:
    s = fleet.settings
    return ["--nats-url", s.nats_url, "--stream", s.stream_name, "--archive-url", s.archive_url]


async def all_archived_sequences(fleet: Fleet) -> list[int]:
    manifest = await fleet.archive.manifest()
    tables = await asyncio.to_thread(list, fleet.archive.iter_tables(manifest))
    return [seq for table in tables for seq in table.column("sequence").to_pylist()]


async def test_verify_detects_a_corrupted_and_a_missing_segment(fleet: Fleet, unique_id, capsys):
    for _ in range(3):
        await write_story(fleet.execute, unique_id("V"))
    archiver = await archiver_on(fleet.settings, fleet.stream.connection, fleet.archive, segment_events=8)
    report = await archiver.archive_once()
    assert report.events == 30 and report.segments == 4
    assert await asyncio.to_thread(cli, "archive", "verify", *cli_settings(fleet)) == 0
    manifest = await fleet.archive.manifest()
    corrupt, gone = manifest.segments[1], manifest.segments[2]
    path = Path(fleet.archive.path(corrupt.name))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    Path(fleet.archive.path(gone.name)).unlink()
    problems = {p.segment: p.problem for p in await fleet.archive.verify()}
    assert problems[corrupt.name].startswith("checksum mismatch") and problems[gone.name] == "missing"
    capsys.readouterr()
    assert await asyncio.to_thread(cli, "archive", "verify", *cli_settings(fleet)) == 1
    out = capsys.readouterr().out
    assert "checksum mismatch" in out and "missing" in out and "2 problem(s)" in out
    # Retention never deletes on the strength of a damaged archive.
    await asyncio.sleep(fleet.settings.stream_max_age + 0.2)
    with pytest.raises(ArchiveCorrupted, match="nothing is deleted"):
        await archiver.enforce_retention()
    info = await fleet.stream.connection.jsm().stream_info(fleet.settings.stream_name)
    assert info.state.messages == 30


async def test_archiving_killed_half_way_resumes_without_duplicates(fleet: Fleet, unique_id):
    settings = fleet.settings
    await seed(settings, stories=8, events_per_story=60, prefix=unique_id("K"))
    archiver = await archiver_on(settings, fleet.stream.connection, fleet.archive, segment_events=25)
    tasks: list[asyncio.Task] = []

    def kill_after_three_segments(done: int, end: int, seconds: float) -> None:
        if done >= 75:
            tasks[0].cancel()  # the job dies half-way, with a segment possibly in flight

    tasks.append(asyncio.create_task(archiver.archive_once(progress=kill_after_three_segments)))
    with contextlib.suppress(asyncio.CancelledError):
        await tasks[0]
    partial = await fleet.archive.manifest()
    assert 3 <= len(partial.segments) < 480 // 25
    archiver = await archiver_on(settings, fleet.stream.connection, fleet.archive, segment_events=25)
    report = await archiver.archive_once()
    assert report.events == 480 - sum(s.events for s in partial.segments)
    sequences = await all_archived_sequences(fleet)
    assert sequences == list(range(1, 481))  # each once, in order
    assert not await fleet.archive.verify()
    assert not await asyncio.to_thread(fleet.archive.orphans_sync, await fleet.archive.manifest())
    again = await archiver.archive_once()  # idempotent: nothing new, nothing written
    assert again.events == 0 and again.segments == 0
    # The archived bytes are the stored bytes.
    stored = [r async for r in StreamRetention(fleet.stream.connection, settings).read_range(1, 480)]
    manifest = await fleet.archive.manifest()
    first = next(fleet.archive.iter_tables(manifest))
    assert first.column("data").to_pylist() == [r.data for r in stored[: first.num_rows]]
    assert first.column("story_id")[0].as_py() == decode_event(stored[0].data).story_id


async def test_export_since_reads_the_archive_then_the_stream(fleet: Fleet, unique_id, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLEET_SUBJECT_PREFIX", fleet.settings.subject_prefix)  # no CLI flag for it
    story = unique_id("E")
    await write_story(fleet.execute, story)
    archiver = await archiver_on(fleet.settings, fleet.stream.connection, fleet.archive, segment_events=4)
    await archiver.archive_once()
    since = datetime.now(UTC)
    await write_story(fleet.execute, unique_id("E2"))  # stream only
    report = await export_events(fleet.settings, str(tmp_path / "all.parquet"))
    assert (report.events, report.from_archive, report.from_stream) == (20, 10, 10)
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.column("sequence").to_pylist() == list(range(1, 21))
    out = tmp_path / "since.parquet"
    args = ["events", "export", "--since", since.isoformat(), "--format", "parquet", "--out", str(out)]
    assert await asyncio.to_thread(cli, *args, *cli_settings(fleet)) == 0
    recent = pq.read_table(out)
    assert recent.num_rows == 10 and pc.min(recent.column("time")).as_py() >= since
    assert "10 events" in capsys.readouterr().out
