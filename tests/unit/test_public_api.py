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
        "Projection",
        "ProjectionTimeout",
        "RuleViolation",
        "Settings",
        "StoryAlreadyExists",
        "StoryError",
        "StoryNotFound",
    ]
    for name in fleet_actors.__all__:
        assert getattr(fleet_actors, name).__name__ == name


def test_the_projection_api_is_public_and_does_not_import_ray():
    import subprocess
    import sys

    code = "import sys, fleet_actors; fleet_actors.Projection; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
