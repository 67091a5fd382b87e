"""One suite for every ProjectionCheckpoints: the in-memory fake and Valkey pass the same rules."""

from __future__ import annotations

import uuid

from fleet_actors.ports.checkpoints import ProjectionCheckpoints


def new_projection() -> str:
    return f"p{uuid.uuid4().hex[:8]}-v1"


class ProjectionCheckpointsContract:
    """Subclasses provide a ``checkpoints`` fixture."""

    async def test_versions_start_at_zero_and_only_move_forward(self, checkpoints: ProjectionCheckpoints):
        projection = new_projection()
        assert await checkpoints.versions(projection, ["a", "b"]) == {"a": 0, "b": 0}
        await checkpoints.advance(projection, {"a": 3, "b": 1})
        await checkpoints.advance(projection, {"a": 2, "b": 4})  # a lower version never wins
        assert await checkpoints.versions(projection, ["a", "b", "c"]) == {"a": 3, "b": 4, "c": 0}
        assert await checkpoints.versions(projection, []) == {}
        await checkpoints.advance(projection, {})

    async def test_projections_are_apart(self, checkpoints: ProjectionCheckpoints):
        one, two = new_projection(), new_projection()
        await checkpoints.advance(one, {"a": 5})
        assert await checkpoints.versions(two, ["a"]) == {"a": 0}

    async def test_registration_progress_and_removal(self, checkpoints: ProjectionCheckpoints):
        projection = new_projection()
        await checkpoints.register(projection, {"name": "p", "version": 1})
        assert (await checkpoints.registered())[projection] == {"name": "p", "version": 1}
        await checkpoints.publish_progress(projection, "w0", {"applied": 3, "phase": "live"})
        await checkpoints.publish_progress(projection, "w1", {"applied": 1})
        await checkpoints.publish_progress(projection, "w0", {"applied": 4, "phase": "live"})
        assert await checkpoints.progress(projection) == {"w0": {"applied": 4, "phase": "live"}, "w1": {"applied": 1}}
        await checkpoints.advance(projection, {"a": 2})
        await checkpoints.remove(projection)
        assert projection not in await checkpoints.registered()
        assert await checkpoints.progress(projection) == {}
        assert await checkpoints.versions(projection, ["a"]) == {"a": 0}
