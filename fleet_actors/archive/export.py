"""Analytics export: events since a time, from the archive and then the stream, as one Parquet file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from fleet_actors.adapters.archive.segments import Archive, Manifest, ParquetExport
from fleet_actors.archive.archiver import StreamLog
from fleet_actors.errors import InvalidCommand

STREAM_CHUNK = 10_000


@dataclass(frozen=True)
class ExportReport:
    events: int
    from_archive: int
    from_stream: int
    bytes: int


def check_since(since: datetime | None) -> None:
    if since is not None and since.tzinfo is None:
        raise InvalidCommand("--since must carry a time zone (e.g. 2026-01-01T00:00:00Z)", field="since")


async def export_events(
    stream: StreamLog,
    archive: Archive | None,
    stream_name: str,
    out: str,
    *,
    since: datetime | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> ExportReport:
    """Write every event stamped at or after ``since`` (all without it) to ``out`` (a path or URL).

    Columns are the archive's (see ``fleet_actors.adapters.archive.segments.SCHEMA``), exact bytes included;
    events come in stream-sequence order: archived ones first, then the stream after the archive.
    Opened with its connections by ``fleet_actors.composition.export_events``.
    """
    check_since(since)
    manifest = await archive.manifest() if archive else Manifest(stream_name)
    from_archive = from_stream = 0
    _, last = await stream.bounds()
    started = time.monotonic()
    # events read (exported or passed over for --since) against what the archive and stream hold
    read, total = 0, manifest.last_sequence + max(0, last - manifest.last_sequence)

    def report_progress() -> None:
        if progress is not None:
            progress(min(read, total), total, time.monotonic() - started)

    with ParquetExport(out, since) as export:
        if archive is not None:
            for table in await asyncio.to_thread(list, archive.iter_tables(manifest)):
                from_archive += export.write_table(table)
                read += table.num_rows
                report_progress()
        read = manifest.last_sequence
        batch = []
        async for row in stream.read_range(manifest.last_sequence + 1, last):
            batch.append(row)
            if len(batch) >= STREAM_CHUNK:
                from_stream += export.write_rows(batch)
                read += len(batch)
                batch = []
                report_progress()
        from_stream += export.write_rows(batch)
        read = total
        report_progress()
    return ExportReport(from_archive + from_stream, from_archive, from_stream, export.size())
