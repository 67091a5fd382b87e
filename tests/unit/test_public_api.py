"""The public surface is small and pinned: a change to it is a deliberate, reviewed change."""

import fleet_actors


def test_exports():
    assert fleet_actors.__all__ == [
        "AsyncFleetClient",
        "BackendUnavailable",
        "CommandResult",
        "ConcurrencyConflict",
        "ContextView",
        "FleetClient",
        "InvalidCommand",
        "ProjectionTimeout",
        "RuleViolation",
        "Settings",
        "StoryAlreadyExists",
        "StoryError",
        "StoryNotFound",
    ]
    for name in fleet_actors.__all__:
        assert getattr(fleet_actors, name).__name__ == name
