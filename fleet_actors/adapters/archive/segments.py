"""Archive segments: Parquet files of stored events plus one manifest, on a folder or a bucket (fsspec).

Layout under the archive URL::

    manifest.json                                   the index; committed last, so it never names a half-written file
    segments/{first:016d}-{last:016d}.parquet       one segment: every stored event with first <= sequence <= last

A segment covers a closed range of stream sequences with no holes between segments (sequences the
stream never had, or that were deleted before archiving, simply have no row). Each row keeps the
exact stored bytes (``data``) beside decoded columns for analytics; readers always decode ``data``
through :func:`fleet_actors.codec.decode_event`, so upcasters apply as on every other read path.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleet_actors.codec import decode_event
from fleet_actors.errors import ArchiveCorrupted, ArchiveUnavailable, EventDecodeError
from fleet_actors.urls import redact_url

MANIFEST = "manifest.json"
SEGMENTS = "segments"
FORMAT_VERSION = 1
#: decoded segments kept in memory by readers (per-story reads hit the same few files)
CACHED_SEGMENTS = 4

SCHEMA = pa.schema(
    [
        pa.field("sequence", pa.uint64(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("stored_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("story_id", pa.string()),
        pa.field("version", pa.int64()),
        pa.field("event_type", pa.string()),
        pa.field("schema_version", pa.int32()),
        pa.field("time", pa.timestamp("us", tz="UTC")),
        pa.field("actor", pa.string()),
        pa.field("command_id", pa.string()),
        pa.field("event_id", pa.string()),
        pa.field("data", pa.binary(), nullable=False),
    ]
)


@dataclass(frozen=True)
class RawEvent:
    """One stored message as read from the stream."""

    sequence: int
    subject: str
    stored_at: datetime
    data: bytes


@dataclass
class SegmentInfo:
    """The manifest's entry for one segment."""

    name: str
    first_sequence: int
    last_sequence: int
    events: int
    bytes: int
    sha256: str
    first_time: str | None
    last_time: str | None
    last_stored_at: str | None
    #: story id -> [first sequence, last sequence, first version, last version] within this segment
    stories: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Manifest:
    stream: str
    format: int = FORMAT_VERSION
    segments: list[SegmentInfo] = field(default_factory=list)
    #: every event at or below this sequence is deleted from the stream, except each story's head
    purged_through: int = 0
    #: aged heads kept in the stream (story -> sequence): deleted once the story moves on
    held_heads: dict[str, int] = field(default_factory=dict)

    @property
    def last_sequence(self) -> int:
        """Everything up to here is archived (0: nothing yet)."""
        return self.segments[-1].last_sequence if self.segments else 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        if raw.get("format") != FORMAT_VERSION:
            raise ArchiveCorrupted(
                f"archive manifest has format {raw.get('format')!r}, this code reads {FORMAT_VERSION}"
            )
        segments = [SegmentInfo(**s) for s in raw.get("segments", [])]
        return cls(raw["stream"], raw["format"], segments, int(raw.get("purged_through", 0)), raw.get("held_heads", {}))


@dataclass(frozen=True)
class VerifyProblem:
    segment: str
    problem: str


def rows_to_table(rows: Sequence[RawEvent]) -> pa.Table:
    """Decode what can be decoded; undecodable events are archived with their bytes and null columns."""
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for row in rows:
        try:
            envelope = decode_event(row.data)
            decoded: tuple[Any, ...] = (
                envelope.story_id,
                envelope.version,
                envelope.event_type,
                envelope.schema_version,
                envelope.timestamp,
                envelope.actor,
                envelope.command_id,
                envelope.event_id,
            )
        except EventDecodeError:
            # The story id is still known from the subject: {prefix...}.{story}.{type}.{partition}
            decoded = (row.subject.rsplit(".", 3)[-3], None, None, None, None, None, None, None)
        for name, value in zip(
            SCHEMA.names,
            (row.sequence, row.subject, row.stored_at, *decoded, row.data),
            strict=True,
        ):
            columns[name].append(value)
    return pa.table(columns, schema=SCHEMA)


def segment_name(first: int, last: int) -> str:
    return f"{SEGMENTS}/{first:016d}-{last:016d}.parquet"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Archive:
    """An archive folder or bucket: segments and their manifest, written append-only."""

    def __init__(self, url: str, stream: str, **storage_options: Any) -> None:
        if not url:
            raise ArchiveUnavailable("no archive configured: set FLEET_ARCHIVE_URL")
        self.url = url.rstrip("/")
        #: the URL as messages show it (no user info)
        self.display_url = redact_url(self.url)
        self.stream = stream
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        except (ImportError, ValueError) as error:
            raise ArchiveUnavailable(f"cannot open archive {self.display_url!r}: {error}") from None
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self._cache: OrderedDict[str, pa.Table] = OrderedDict()

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # --- blocking primitives (run in a thread by the async callers) -------------------------

    def _read_bytes(self, name: str) -> bytes:
        try:
            with self.fs.open(self.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise
        except Exception as error:
            raise ArchiveUnavailable(f"cannot read {name} from archive {self.display_url}: {error}") from None

    def _write_atomic(self, name: str, data: bytes) -> None:
        """A reader sees the old file or the new one, never a part: a temp name then a rename on a
        folder; on object stores a single PUT is already atomic."""
        try:
            if self.local:
                self.fs.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
                temp = self.path(f"{name}.tmp-{uuid.uuid4().hex[:8]}")
                with self.fs.open(temp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temp, self.path(name))
            else:
                self.fs.pipe_file(self.path(name), data)
        except Exception as error:
            raise ArchiveUnavailable(f"cannot write {name} to archive {self.display_url}: {error}") from None

    def load_manifest_sync(self) -> Manifest:
        try:
            data = self._read_bytes(MANIFEST)
        except FileNotFoundError:
            return Manifest(self.stream)
        manifest = Manifest.from_json(data)
        if manifest.stream != self.stream:
            raise ArchiveCorrupted(
                f"archive {self.display_url} belongs to stream {manifest.stream}, not {self.stream}; "
                "use another FLEET_ARCHIVE_URL"
            )
        return manifest

    def commit_manifest_sync(self, manifest: Manifest) -> None:
        self._write_atomic(MANIFEST, manifest.to_json())

    def write_segment_sync(self, first: int, last: int, rows: Sequence[RawEvent]) -> SegmentInfo:
        """Write one segment file (not yet in the manifest); returns its manifest entry."""
        table = rows_to_table(rows)
        buffer = io.BytesIO()
        # zstd: the best size for the exact bytes column at a modest CPU cost; row groups of 10k
        # let readers project columns (sequence, stored_at) without decoding everything
        pq.write_table(table, buffer, compression="zstd", row_group_size=10_000)
        data = buffer.getvalue()
        name = segment_name(first, last)
        self._write_atomic(name, data)
        stories: dict[str, list[int]] = {}
        for row, story, version in zip(
            rows, table.column("story_id").to_pylist(), table.column("version").to_pylist(), strict=True
        ):
            version = version or 0
            entry = stories.get(story)
            if entry is None:
                stories[story] = [row.sequence, row.sequence, version, version]
            else:
                entry[1], entry[3] = row.sequence, max(entry[3], version)
        times = [t for t in table.column("time").to_pylist() if t is not None]
        return SegmentInfo(
            name=name,
            first_sequence=first,
            last_sequence=last,
            events=len(rows),
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            first_time=_iso(min(times)) if times else None,
            last_time=_iso(max(times)) if times else None,
            last_stored_at=_iso(rows[-1].stored_at) if rows else None,
            stories=stories,
        )

    def last_sequence_stored_before_sync(self, info: SegmentInfo, horizon: datetime) -> int | None:
        """The last sequence of the segment's leading run of events stored before ``horizon`` (None: none)."""
        table = self.read_segment_sync(info, ["sequence", "stored_at"])
        old = pc.less(table.column("stored_at"), horizon)
        # Stored times follow sequences; stop at the first young event all the same.
        young = pc.index(old, False).as_py()
        if young == -1:
            return info.last_sequence
        if young > 0:
            return int(table.column("sequence")[young - 1].as_py())
        return None

    def read_segment_sync(self, info: SegmentInfo, columns: Sequence[str] | None = None) -> pa.Table:
        if columns is None and info.name in self._cache:
            self._cache.move_to_end(info.name)
            return self._cache[info.name]
        try:
            data = self._read_bytes(info.name)
        except FileNotFoundError:
            raise ArchiveCorrupted(f"archive segment {info.name} is missing from {self.display_url}") from None
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise ArchiveCorrupted(f"archive segment {info.name} does not match its checksum")
        table = pq.read_table(io.BytesIO(data), columns=list(columns) if columns else None)
        if columns is None:
            self._cache[info.name] = table
            while len(self._cache) > CACHED_SEGMENTS:
                self._cache.popitem(last=False)
        return table

    def verify_segment_sync(self, info: SegmentInfo) -> str | None:
        """None if the file matches its checksum and the manifest's range and count; else the problem."""
        try:
            data = self._read_bytes(info.name)
        except FileNotFoundError:
            return "missing"
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.sha256:
            return f"checksum mismatch (sha256 {digest[:12]}..., manifest {info.sha256[:12]}...)"
        try:
            sequences = pq.read_table(io.BytesIO(data), columns=["sequence"]).column("sequence")
        except Exception as error:  # a file that matches its checksum but does not parse was written broken
            return f"unreadable Parquet: {error}"
        if len(sequences) != info.events:
            return f"{len(sequences)} rows, manifest says {info.events}"
        if len(sequences) and (
            pc.min(sequences).as_py() < info.first_sequence or pc.max(sequences).as_py() > info.last_sequence
        ):
            return "rows outside the segment's sequence range"
        return None

    def orphans_sync(self, manifest: Manifest) -> list[str]:
        """Segment files the manifest does not name (left by a run killed before its commit)."""
        try:
            found = self.fs.ls(self.path(SEGMENTS), detail=False)
        except FileNotFoundError:
            return []
        known = {self.path(s.name).rstrip("/") for s in manifest.segments}
        prefix = self.root.rstrip("/") + "/"
        return sorted(
            p.removeprefix(prefix)
            for p in (str(p) for p in found)
            if p.rstrip("/") not in known and not p.endswith("/")
        )

    def remove_sync(self, name: str) -> None:
        try:
            self.fs.rm(self.path(name))
        except FileNotFoundError:
            pass
        except Exception as error:
            raise ArchiveUnavailable(f"cannot delete {name} from archive {self.display_url}: {error}") from None

    # --- async API ----------------------------------------------------------------------------

    async def manifest(self) -> Manifest:
        """The committed manifest (an empty one for a new archive)."""
        return await asyncio.to_thread(self.load_manifest_sync)

    async def verify(self, manifest: Manifest | None = None, *, since: int = 0) -> list[VerifyProblem]:
        """Check every segment (or those ending after ``since``) against the manifest; empty means sound."""
        manifest = manifest or await self.manifest()
        problems: list[VerifyProblem] = []
        expected_first = 1
        for info in manifest.segments:
            if info.first_sequence != expected_first:
                problems.append(
                    VerifyProblem(info.name, f"range starts at {info.first_sequence}, expected {expected_first}")
                )
            expected_first = info.last_sequence + 1
            if info.last_sequence < since:
                continue
            problem = await asyncio.to_thread(self.verify_segment_sync, info)
            if problem:
                problems.append(VerifyProblem(info.name, problem))
        return problems

    def segments_for(self, manifest: Manifest, story_id: str, after: int, before: int) -> list[SegmentInfo]:
        """Segments holding events of ``story_id`` with ``after < sequence < before``."""
        out = []
        for info in manifest.segments:
            if info.last_sequence <= after or info.first_sequence >= before:
                continue
            span = info.stories.get(story_id)
            if span and span[1] > after and span[0] < before:
                out.append(info)
        return out

    async def story_rows(self, manifest: Manifest, story_id: str, after: int, before: int) -> list[tuple[int, bytes]]:
        """(sequence, exact bytes) of one story's archived events in ``(after, before)``, in order."""
        out: list[tuple[int, bytes]] = []
        for info in self.segments_for(manifest, story_id, after, before):
            table = await asyncio.to_thread(self.read_segment_sync, info)
            mask = pc.and_(
                pc.equal(table.column("story_id"), story_id),
                pc.and_(pc.greater(table.column("sequence"), after), pc.less(table.column("sequence"), before)),
            )
            chosen = table.filter(mask)
            out.extend(zip(chosen.column("sequence").to_pylist(), chosen.column("data").to_pylist(), strict=True))
        return out

    def iter_tables(self, manifest: Manifest, *, after: int = 0, up_to: int | None = None) -> Iterator[pa.Table]:
        """Segment tables in sequence order, trimmed to ``after < sequence <= up_to`` (blocking)."""
        for info in manifest.segments:
            if info.last_sequence <= after or (up_to is not None and info.first_sequence > up_to):
                continue
            table = self.read_segment_sync(info)
            if info.first_sequence <= after or (up_to is not None and info.last_sequence > up_to):
                mask = pc.greater(table.column("sequence"), after)
                if up_to is not None:
                    mask = pc.and_(mask, pc.less_equal(table.column("sequence"), up_to))
                table = table.filter(mask)
            yield table


def stored_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value).astimezone(UTC) if value else None


def summarize(manifest: Manifest) -> dict[str, Any]:
    """What `archive status` prints."""
    segments = manifest.segments
    return {
        "stream": manifest.stream,
        "segments": len(segments),
        "events": sum(s.events for s in segments),
        "bytes": sum(s.bytes for s in segments),
        "archived_through": manifest.last_sequence,
        "purged_through": manifest.purged_through,
        "first_time": segments[0].first_time if segments else None,
        "last_time": segments[-1].last_time if segments else None,
        "stories": len({story for s in segments for story in s.stories}),
    }


def chunks(items: Iterable[RawEvent], size: int) -> Iterator[list[RawEvent]]:
    batch: list[RawEvent] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class ParquetExport:
    """One Parquet file (a path or URL) in the archive's columns, optionally only events since a time."""

    def __init__(self, out: str, since: datetime | None) -> None:
        self._out = out
        self._since = since
        self._handle: Any = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ParquetExport:
        self._handle = fsspec.open(self._out, "wb").__enter__()
        self._writer = pq.ParquetWriter(self._handle, SCHEMA, compression="zstd")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            if self._handle is not None:
                self._handle.close()

    def write_table(self, table: pa.Table) -> int:
        """Write the table's events since the time; returns how many."""
        assert self._writer is not None
        chosen = self._chosen(table)
        self._writer.write_table(chosen)
        return int(chosen.num_rows)

    def write_rows(self, rows: Sequence[RawEvent]) -> int:
        return sum(self.write_table(rows_to_table(part)) for part in chunks(list(rows), EXPORT_CHUNK)) if rows else 0

    def _chosen(self, table: pa.Table) -> pa.Table:
        if self._since is None:
            return table
        since = pa.scalar(self._since, SCHEMA.field("time").type)
        return table.filter(pc.fill_null(pc.greater_equal(table.column("time"), since), False))

    def size(self) -> int:
        fs, path = fsspec.core.url_to_fs(self._out)
        return int(fs.size(path) or 0)


EXPORT_CHUNK = 10_000
