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


async def test_a_promoted_version_makes_the_projector_reopen_on_it(monkeypatch):
    from types import SimpleNamespace

    written = {"graph": 1, "documents": 1}

    class Pointers:
        async def get(self) -> dict[str, int]:
            return dict(written)

        async def close(self) -> None:
            pass

    opened: list[FakeProjector] = []

    async def open_fake(*args, **kwargs) -> FakeProjector:
        projector = FakeProjector(fail=False)
        projector.progress = SimpleNamespace(targets=dict(written))  # type: ignore[attr-defined]
        opened.append(projector)
        return projector

    async def pointers(settings) -> Pointers:
        return Pointers()

    monkeypatch.setattr(projector_actor, "open_projector", open_fake)
    monkeypatch.setattr(projector_actor, "open_read_model_versions", pointers)
    monkeypatch.setattr(projector_actor, "RETARGET_CHECK_SECONDS", 0.01)
    actor = ProjectorActor(Settings(), 0, 1, ProjectorPolicy(backoff_initial=0.01, backoff_max=0.05))
    async with asyncio.timeout(5):
        while not opened:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert len(opened) == 1  # nothing promoted: the same runner goes on
        written["graph"] = 2  # `projections promote graph 2`
        while len(opened) < 2:
            await asyncio.sleep(0.01)
    assert opened[0].closed and opened[1].progress.targets == {"graph": 2, "documents": 1}  # type: ignore[attr-defined]
    actor._stop.set()
    await asyncio.wait_for(actor._task, 5)
