"""What every Ray worker of a cluster this project starts runs as it starts (``RAY_preload_python_modules``,
actors/spare_workers.py): the story actor's code, imported before the worker idles in the pool, and then
the process's objects so far (Ray's and ours, ~100,000 of them) frozen out of the garbage collector's
sight.

Also what Ray itself imports on the first task a worker answers (its serialization context's add-ons:
pydantic, ~100 ms in a fresh worker here, between the first call's execution and its reply).

Without the freeze, the first snapshot decode in a fresh worker allocated enough objects to trigger a full
collection that walked all of them: 80 of the ~100 ms of CPU a warm story activation took here, against
20 ms in a process whose imports were frozen. Module-level objects live as long as the process anyway;
whatever is garbage at this point is collected first.
"""

from __future__ import annotations

import contextlib

# imported to be loaded in the worker before it idles (the story actor imports composition lazily)
import fleet_actors.actors.story_actor
import fleet_actors.composition  # noqa: F401
from fleet_actors.codec.collector import freeze_long_lived

#: modules Ray imports when a worker first serializes a task's result (ray.util.serialization_addons)
RAY_FIRST_TASK_MODULES = ("ray._common.pydantic_compat", "ray._private.arrow_serialization")


def import_ray_first_task_modules() -> None:
    """Best effort: private modules of Ray, which another Ray version may not have."""
    import importlib

    for name in RAY_FIRST_TASK_MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


import_ray_first_task_modules()
freeze_long_lived()
