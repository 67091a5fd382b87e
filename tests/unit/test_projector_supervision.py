"""The projector actor supervises its projector: a failure that run() does not wait out itself
(a bug, an error nobody foresaw) closes it and opens a fresh one; the actor never sits idle."""

from __future__ import annotations

import asyncio

from fleet_actors.actors import projector_actor
from fleet_actors.actors.projector_actor import ProjectorActor
from fleet_actors.projections.policy import ProjectorPolicy
from fleet_actors.settings import Settings


class FakeProjector:
    def __init__(self, fail: bool) -> None:
        self.fail, self.closed = fail, False

    async def run(self, stop: asyncio.Event) -> None:
        if self.fail:
            raise RuntimeError("unforeseen")
        await stop.wait()

    async def close(self) -> None:
        self.closed = True


async def test_a_failed_projector_is_closed_and_reopened(monkeypatch):
    opened: list[FakeProjector] = []

    async def open_fake(*args, **kwargs) -> FakeProjector:
        opened.append(FakeProjector(fail=len(opened) < 2))
        return opened[-1]

    monkeypatch.setattr(projector_actor, "open_projector", open_fake)
    actor = ProjectorActor(Settings(), 0, 1, ProjectorPolicy(backoff_initial=0.01, backoff_max=0.05))
    async with asyncio.timeout(5):
        while len(opened) < 3:
            await asyncio.sleep(0.01)
    assert [p.closed for p in opened] == [True, True, False]
    assert not actor._task.done()  # the third one runs until stopped
    actor._stop.set()
    await asyncio.wait_for(actor._task, 5)
    assert opened[2].closed and len(opened) == 3
