"""``fleet-actors verify``: replay the log and compare it with the read models of a deployment."""

from __future__ import annotations

from fleet_actors.composition import open_event_store, open_read_side
from fleet_actors.projections.verify import Progress, VerifyReport, verify_all
from fleet_actors.settings import Settings


async def verify(
    settings: Settings,
    story_ids: list[str] | None = None,
    *,
    documents: bool = True,
    census: bool = False,
    progress: Progress | None = None,
    version: int | None = None,
) -> VerifyReport:
    """Compare the graph (and, unless ``documents`` is False, the context documents) with the log:
    the whole history (archive + stream with FLEET_ARCHIVE_URL), every story unless ``story_ids``.
    ``census``: also the whole graph's counts and orphans (for a graph database that holds this log only).
    ``version``: the version of both read models to check (blue/green); by default the versions
    readers read (each read model's own; 1 until a switch)."""
    store = await open_event_store(settings, update_stream=False)
    try:
        read_side = await open_read_side(settings, version, read=True)
        try:
            return await verify_all(
                store,
                read_side.documents if documents else None,
                read_side.graph,
                story_ids,
                census=census,
                progress=progress,
            )
        finally:
            await read_side.close()
    finally:
        await store.close()
