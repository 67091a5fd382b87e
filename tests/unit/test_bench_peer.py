"""The peer benchmark's model of the peer (``python -m benchmarks peer``) on SQLite, on tiny sizes: its
figures count what they claim (one event per command, retries after conflicts, snapshots where the
cold read expects them, fsync on each commit). Skipped without the ``bench`` extra."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("eventsourcing")

from benchmarks import bench_peer


@pytest.fixture
def peer(tmp_path: Path):
    story_class, app_class = bench_peer._peer_classes(snapshot_every=10)
    peer, figures = bench_peer.sqlite_peer(app_class, tmp_path)
    assert figures["peer_sqlite_synchronous"] == "FULL"
    return peer, story_class


@pytest.mark.parametrize("locked", [False, True])
def test_contended_writers_each_add_exactly_one_event(peer, locked: bool) -> None:
    peer, story_class = peer
    app = peer.open()
    app.save(story_class("hot", "a story"))
    story_id = bench_peer.peer_id("hot")
    locks = {story_id: threading.Lock()} if locked else None

    result = bench_peer._peer_round(app, [story_id], locks, seconds=0.3)

    assert result["commands"] > 0 and len(result["latencies"]) == result["commands"]
    assert app.repository.get(story_id).version == 1 + result["commands"]  # no command lost or doubled
    if locked:
        assert result["conflicts"] == 0
    app.close()


def test_a_fresh_application_reads_the_newest_snapshot_and_the_tail(peer) -> None:
    peer, story_class = peer
    app = peer.open()
    bench_peer._peer_fill(app, story_class, "big", [10, 10, 4, 1, 1])  # versions 1 + 26
    app.close()

    fresh = peer.open()
    story_id = bench_peer.peer_id("big")
    assert [s.originator_version for s in fresh.snapshots.get(story_id)] == [10, 20]
    story = fresh.repository.get(story_id)
    assert (story.version, len(story.milestones), story.milestones[-1]["description"]) == (27, 26, "milestone 4-0")
    fresh.close()
