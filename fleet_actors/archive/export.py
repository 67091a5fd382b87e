"""Analytics export: events since a time, from the archive and then the stream, as one Parquet file."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleet_actors.adapters.archive.segments import SCHEMA, Archive, Manifest, chunks, rows_to_table
from fleet_actors.adapters.jetstream import connect_nats
from fleet_actors.adapters.jetstream.connection import nats_errors
from fleet_actors.archive.archiver import read_stream_range
from fleet_actors.errors import InvalidCommand
from fleet_actors.settings import Settings

STREAM_CHUNK = 10_000


@dataclass(frozen=True)
class ExportReport:
    events: int
    from_archive: int
    from_stream: int
    bytes: int


def _since(table: pa.Table, since: datetime | None) -> pa.Table:
    if since is None:
        return table
    return table.filter(
        pc.fill_null(pc.greater_equal(table.column("time"), pa.scalar(since, SCHEMA.field("time").type)), False)
    )


async def export_events(settings: Settings, out: str, *, since: datetime | None = None) -> ExportReport:
    """Write every event stamped at or after ``since`` (all without it) to ``out`` (a path or URL).

    Columns are the archive's (see ``fleet_actors.adapters.archive.segments.SCHEMA``), exact bytes included;
    events come in stream-sequence order: archived ones first, then the stream after the archive.
    """
    if since is not None and since.tzinfo is None:
        raise InvalidCommand("--since must carry a time zone (e.g. 2026-01-01T00:00:00Z)", field="since")
    archive = Archive(settings.archive_url, settings.stream_name) if settings.archive_url else None
    manifest = await archive.manifest() if archive else Manifest(settings.stream_name)
    nc = await connect_nats(settings, name="fleet-export")
    from_archive = from_stream = 0
    try:
        with nats_errors(f"reading stream {settings.stream_name}"):
            info = await nc.jsm(timeout=settings.nats_timeout).stream_info(settings.stream_name)
        with fsspec.open(out, "wb") as handle, pq.ParquetWriter(handle, SCHEMA, compression="zstd") as writer:
            if archive is not None:
                for table in await asyncio.to_thread(list, archive.iter_tables(manifest)):
                    chosen = _since(table, since)
                    writer.write_table(chosen)
                    from_archive += chosen.num_rows
            rows = read_stream_range(nc, settings, manifest.last_sequence + 1, info.state.last_seq)
            batch = []
            async for row in rows:
                batch.append(row)
                if len(batch) >= STREAM_CHUNK:
                    from_stream += _write(writer, batch, since)
                    batch = []
            from_stream += _write(writer, batch, since)
        size = fsspec.core.url_to_fs(out)[0].size(fsspec.core.url_to_fs(out)[1])
    finally:
        await nc.close()
    return ExportReport(from_archive + from_stream, from_archive, from_stream, int(size or 0))


def _write(writer: pq.ParquetWriter, batch: list, since: datetime | None) -> int:
    if not batch:
        return 0
    written = 0
    for part in chunks(batch, STREAM_CHUNK):
        table = _since(rows_to_table(part), since)
        writer.write_table(table)
        written += table.num_rows
    return written
