"""Spare workers: how many a process asks the raylet for as stories activate."""

from __future__ import annotations

import pytest

from fleet_actors.actors import spare_workers
from fleet_actors.actors.spare_workers import KEEP_ALIVE_SECONDS, START_SECONDS, SpareWorkers


@pytest.fixture
def asked(monkeypatch):
    requests: list[int] = []

    def prestart(count: int) -> bool:
        requests.append(count)
        return True

    monkeypatch.setattr(spare_workers, "prestart", prestart)
    return requests


def test_the_first_activation_asks_for_the_pool_and_each_later_one_for_its_replacement(asked):
    now = [0.0]
    spares = SpareWorkers(clock=lambda: now[0])
    for _ in range(4):
        spares.activated(2)
        now[0] += START_SECONDS  # activations a worker start apart: each one's spare is replaced
    assert asked == [2, 1, 1, 1]


def test_two_activations_close_together_both_get_their_replacement(asked):
    # The pool holds two: an activation that follows another within a worker's start time still has
    # a spare, and both are replaced (the old cap of two per 10 s left every third activation without)
    now = [0.0]
    spares = SpareWorkers(clock=lambda: now[0])
    spares.activated(2)
    for _ in range(3):
        now[0] += START_SECONDS
        spares.activated(2)
        now[0] += 0.5
        spares.activated(2)
    assert asked == [2, 1, 1, 1, 1, 1, 1]


def test_a_burst_of_activations_asks_for_no_more_than_the_pool_per_start_time(asked):
    # During a burst, actors also start on new processes: replacements asked for each would pile up.
    now = [0.0]
    spares = SpareWorkers(clock=lambda: now[0])
    spares.activated(3)
    for _ in range(20):
        now[0] += 0.01
        spares.activated(3)
    assert asked == [3]
    now[0] += START_SECONDS
    for _ in range(20):
        now[0] += 0.01
        spares.activated(3)
    assert asked == [3, 3]


def test_spares_past_their_keep_alive_are_not_counted(asked):
    now = [0.0]
    spares = SpareWorkers(clock=lambda: now[0])
    spares.activated(2)
    now[0] += KEEP_ALIVE_SECONDS  # the raylet may have stopped them: the whole pool again
    spares.activated(2)
    assert asked == [2, 2]


def test_no_spares_when_turned_off_or_when_the_raylet_cannot_be_asked(asked, monkeypatch):
    SpareWorkers().activated(0)
    assert asked == []
    monkeypatch.setattr(spare_workers, "prestart", lambda count: asked.append(count) and False)
    spares = SpareWorkers()
    spares.activated(2)
    spares.activated(2)  # not asked yet: the whole pool again
    assert asked == [2, 2]


def test_without_ray_joined_nothing_is_asked_and_nothing_fails(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # earlier tests of the run may have joined Ray
    assert spare_workers.prestart(2) is False
