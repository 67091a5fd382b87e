"""The archive part of a full rebuild: a replayer applies its partitions' archived events first."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fleet_actors.archive.segments import Archive, Manifest
from fleet_actors.codec import decode_event
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold

if TYPE_CHECKING:
    from fleet_actors.projections.rebuild import Replayer


async def replay_archive(replayer: Replayer, archive: Archive, manifest: Manifest, end_sequence: int) -> int:
    """Apply every archived event of the replayer's partitions up to ``end_sequence``, in order.

    The replayer's consumer starts right after the archive (``manifest.last_sequence + 1``), so
    the two parts meet without gap or overlap. Re-running after a kill is harmless: the graph's
    version guard skips what was applied.
    """
    owned = [str(p) for p in replayer.partitions]
    applied = 0
    for table in await asyncio.to_thread(list, archive.iter_tables(manifest, up_to=end_sequence)):
        # The partition is the stored subject's last token ({prefix}.{story}.{type}.{partition}).
        subjects = table.column("subject").to_pylist()
        mine = [i for i, subject in enumerate(subjects) if subject.rsplit(".", 1)[-1] in owned]
        if not mine:
            continue
        data = table.column("data").take(mine).to_pylist()
        by_story: dict[str, list[EventEnvelope]] = {}
        for raw in data:
            envelope = decode_event(raw)
            by_story.setdefault(envelope.story_id, []).append(envelope)
        for story_id, envelopes in by_story.items():
            for start in range(0, len(envelopes), replayer.policy.batch_size):
                chunk = envelopes[start : start + replayer.policy.batch_size]
                state = fold(replayer._states.get(story_id) or StoryState(story_id), chunk)
                replayer._states[story_id] = state
                await replayer._graph.apply({story_id: chunk}, {story_id: state})
                applied += len(chunk)
    replayer.done_events += applied
    return applied
