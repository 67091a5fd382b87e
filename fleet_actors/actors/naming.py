"""Names and options of the project's Ray actors, and the one wrapper around Ray's actor API."""

from __future__ import annotations

from typing import Any

import ray

from fleet_actors.settings import Settings

REGISTRY_NAME = "fleet:story-registry"
STORY_PREFIX = "story:"


def story_actor_name(story_id: str) -> str:
    return f"{STORY_PREFIX}{story_id}"


def get_or_create(actor_cls: Any, name: str, settings: Settings, *args: Any, **options: Any) -> Any:
    """A detached named actor, created on first use; concurrent creators get the same actor."""
    return actor_cls.options(
        name=name,
        namespace=settings.ray_namespace,
        get_if_exists=True,
        lifetime="detached",
        # Actors only hold state and wait on I/O: they must not reserve a CPU slot each.
        num_cpus=0,
        **options,
    ).remote(*args)


def find_live(name: str, settings: Settings) -> Any | None:
    """The named actor if it is alive now, else None."""
    try:
        return ray.get_actor(name, namespace=settings.ray_namespace)
    except ValueError:
        return None


def live_story_ids(settings: Settings) -> list[str]:
    """Story actors alive in the cluster right now (from Ray's own actor table)."""
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        entry["name"][len(STORY_PREFIX) :]
        for entry in names
        if entry["namespace"] == settings.ray_namespace and entry["name"].startswith(STORY_PREFIX)
    )
