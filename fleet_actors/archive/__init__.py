"""The event archive: Parquet segments in cold storage, retention behind it, full history through it."""

from fleet_actors.archive.composite import ArchivedEventStore, open_event_store, purge_watermark
from fleet_actors.archive.segments import Archive, Manifest, SegmentInfo, VerifyProblem

__all__ = [
    "Archive",
    "ArchivedEventStore",
    "Manifest",
    "SegmentInfo",
    "VerifyProblem",
    "open_event_store",
    "purge_watermark",
]
