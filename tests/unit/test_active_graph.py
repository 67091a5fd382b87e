"""Readers' graph under blue/green switches: the active version's graph, opened once; versions no
longer read closed, except the one switched from (reads begun before the switch may still use it)."""

from __future__ import annotations

from typing import Any

from fleet_actors.application.active_graph import ActiveGraph


class Pointer:
    def __init__(self) -> None:
        self.version = 1

    async def current(self) -> int:
        return self.version


class Graph:
    def __init__(self, version: int) -> None:
        self.version, self.closed = version, False

    async def close(self) -> None:
        self.closed = True


async def test_switches_close_the_versions_no_longer_read():
    pointer, opened = Pointer(), []

    async def open_version(version: int) -> Any:
        opened.append(Graph(version))
        return opened[-1]

    graphs = ActiveGraph(pointer, open_version)
    first = await graphs.graph()
    assert await graphs.graph() is first and len(opened) == 1  # opened once, kept
    pointer.version = 2
    second = await graphs.graph()
    assert second.version == 2 and not first.closed  # the version switched from stays for a moment
    pointer.version = 3
    third = await graphs.graph()
    assert third.version == 3 and first.closed and not second.closed
    pointer.version = 2  # a switch back: still open, nothing reopened
    assert await graphs.graph() is second and len(opened) == 3 and not third.closed
    pointer.version = 1  # the dropped-and-recreated or switched-back-to version opens afresh
    again = await graphs.graph()
    assert again is not first and again.version == 1 and third.closed and not second.closed
    await graphs.close()
    assert all(graph.closed for graph in opened)
