"""Decoding without the cyclic garbage collector running in the middle of it.

A decoded story is tens of thousands of small objects (a 10,000-event history: ~60,000; a snapshot
of its state: ~30,000), none of them in a reference cycle. Allocating them with the collector on
runs a young collection every 700 allocations, and every tenth of those an older one, and now and
then a full one that walks the whole heap: in a reader holding a few decoded states, full
collections of 100+ ms landed inside temporal reads and were most of their p99
(docs/benchmarks.md, "Reads at the log's speed"). Paused around one decode, the collector runs
once afterwards for all of it, and the full collections become rarer by the same factor.

And a long-running process's objects so far (its imports: ~100,000 in a gateway or a Ray worker)
frozen out of the collector's sight once it has started, so that each full collection walks what the
process made since (50 ms of every full collection in a gateway, measured: docs/benchmarks.md).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for the block, back on after it if it was on before.

    Only for code that allocates no reference cycles of its own (reference counting still frees
    everything else at once). Nesting and other threads are safe: whoever found it on turns it
    back on, so at worst a collection runs during another thread's paused block.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def freeze_long_lived() -> None:
    """Collect what is garbage now, then keep every object left out of later collections.

    For a process that has just started (its modules, classes and connections live as long as it
    does): freezing them costs no memory, and objects frozen are still freed when nothing refers to
    them; only a reference cycle among them that became garbage later would stay.
    """
    gc.collect()
    gc.freeze()
