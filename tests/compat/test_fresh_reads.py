"""Item 4: a read right after a write reflects it, as the current service's callers expect (they send
no min_version): GetContext and RehydrateSession wait, within FLEET_FRESH_READ_TIMEOUT, for the
read models to reach the story's head."""

from __future__ import annotations

from tests.compat.conftest import Compat


async def test_get_context_right_after_update_context_sees_the_write(compat: Compat) -> None:
    pb = compat.pb
    sid = await compat.new_story()
    for n in range(5):
        written = await compat.update(sid, compat.change("CREATE", "DECISION", {"title": f"Decision {n}"}, f"D{n}"))
        read = await compat.stub.GetContext(pb.GetContextRequest(story_id=sid, role="developer", phase="BUILD"))
        assert int(read.version) == written.version, f"round {n}: served v{read.version}, wrote v{written.version}"


async def test_rehydrate_right_after_a_write_reflects_it(compat: Compat) -> None:
    pb = compat.pb
    sid = await compat.new_story()
    written = await compat.update(sid, compat.change("CREATE", "SUBTASK", {"title": "Wire the API"}, "T1"))
    packs = await compat.stub.RehydrateSession(pb.RehydrateSessionRequest(case_id=sid, roles=["developer"]))
    assert packs.version == written.version
