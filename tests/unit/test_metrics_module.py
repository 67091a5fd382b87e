"""The metrics module: outcomes and reasons from the error table, labels checked, metrics that can be off."""

from __future__ import annotations

import pytest

from fleet_actors.errors import (
    AppendOutcomeUnknown,
    BackendUnavailable,
    ConcurrencyConflict,
    ConfigurationError,
    InvalidCommand,
    RuleViolation,
    StoryNotFound,
)
from fleet_actors.observability import metrics as metrics_module
from fleet_actors.observability.metrics import command_outcome, metrics, set_enabled
from fleet_actors.settings import Settings


def test_command_outcomes_and_reasons() -> None:
    assert command_outcome(None) == ("accepted", "")
    assert command_outcome(None, duplicate=True) == ("duplicate", "")
    assert command_outcome(ConcurrencyConflict("x", expected=1, actual=2)) == ("conflict", "ABORTED")
    assert command_outcome(BackendUnavailable("x")) == ("unavailable", "UNAVAILABLE")
    assert command_outcome(AppendOutcomeUnknown("x")) == ("unavailable", "UNAVAILABLE")
    assert command_outcome(RuleViolation("x")) == ("rejected", "FAILED_PRECONDITION")
    assert command_outcome(InvalidCommand("x")) == ("rejected", "INVALID_ARGUMENT")
    assert command_outcome(StoryNotFound("s")) == ("rejected", "NOT_FOUND")
    assert command_outcome(RuntimeError("bug")) == ("unavailable", "INTERNAL")


def test_labels_are_checked_and_children_cached() -> None:
    family = metrics().commands
    child = family.child("CreateStory", "accepted", "")
    assert family.child("CreateStory", "accepted", "") is child
    before = child._value.get()
    family.inc("CreateStory", "accepted", "")
    assert child._value.get() == before + 1
    with pytest.raises(ValueError):
        family.child("CreateStory")


def test_metrics_can_be_turned_off_and_on() -> None:
    try:
        off = set_enabled(False)
        assert metrics() is off
        off.commands.inc("CreateStory", "accepted", "")  # records nothing, raises nothing
        off.command_duration.observe(0.1, "CreateStory", "accepted")
        metrics_module.configure(Settings(metrics_enabled=True))
        assert metrics() is not off and metrics() is set_enabled(True)
    finally:
        set_enabled(True)


def test_settings_of_observability() -> None:
    assert Settings.from_env({"FLEET_METRICS_ENABLED": "0"}).metrics_enabled is False
    assert Settings.from_env({"FLEET_TRACES_EXPORTER": "console"}).traces_exporter == "console"
    with pytest.raises(ConfigurationError):
        Settings(traces_exporter="jaeger")
    with pytest.raises(ConfigurationError):
        Settings(log_format="xml")


def test_a_zero_increment_never_reaches_ray() -> None:
    """ray.util.metrics.Counter.inc(0) raises: a batch of only duplicates must not fail a projector."""
    calls: list[float] = []

    class FakeRayCounter:
        def inc(self, value: float, tags: object) -> None:
            if value <= 0:
                raise ValueError(f"value must be >0, got {value}")
            calls.append(value)

    child = metrics_module._RayChild(FakeRayCounter(), {"projector": "p"})
    child.inc(0)
    child.inc(3)
    assert calls == [3]


def test_collector_pauses_are_observed_by_generation_once_watched() -> None:
    import gc

    from fleet_actors.observability.metrics import watch_collector_pauses

    full = metrics().gc_pauses.child("2")
    before = full._sum.get(), sum(bucket.get() for bucket in full._buckets)
    watch_collector_pauses()
    watch_collector_pauses()  # once per process: not two observations per collection
    callbacks = len(gc.callbacks)
    gc.collect()
    count = sum(bucket.get() for bucket in full._buckets)
    assert count == before[1] + 1 and full._sum.get() > before[0]
    watch_collector_pauses()
    assert len(gc.callbacks) == callbacks


def test_a_process_serving_its_metrics_watches_its_collector(monkeypatch) -> None:
    from fleet_actors.observability.metrics import serve_process_metrics, stop_metrics_servers

    monkeypatch.setattr(metrics_module, "_collector_watched", False)
    installed: list[bool] = []
    monkeypatch.setattr(metrics_module.gc, "callbacks", [])
    try:
        assert serve_process_metrics(Settings(metrics_address="127.0.0.1:0")) is not None
        installed.append(len(metrics_module.gc.callbacks) == 1)
    finally:
        stop_metrics_servers()
    assert installed == [True]
