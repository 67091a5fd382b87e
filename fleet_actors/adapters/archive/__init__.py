"""The event archive: Parquet segments in a folder or bucket (fsspec), and the event store that reads
through it past the stream's retention horizon."""

from fleet_actors.adapters.archive.archived_event_store import ArchivedEventStore, purge_watermark
from fleet_actors.adapters.archive.segments import Archive, Manifest, SegmentInfo, VerifyProblem

__all__ = ["Archive", "ArchivedEventStore", "Manifest", "SegmentInfo", "VerifyProblem", "purge_watermark"]
