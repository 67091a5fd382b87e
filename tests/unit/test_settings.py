"""Settings come from FLEET_* variables and refuse values that cannot work."""

import pytest

from fleet_actors.actors.story_actor import story_actor_options
from fleet_actors.errors import ConfigurationError
from fleet_actors.settings import Settings


def test_story_actor_memory_comes_from_the_environment_and_becomes_a_ray_reservation():
    settings = Settings.from_env({"FLEET_STORY_ACTOR_MEMORY_MB": "100"})
    assert story_actor_options(settings)["memory"] == 100 * 2**20
    assert "memory" not in story_actor_options(Settings())  # nothing reserved by default


def test_a_negative_story_actor_memory_is_refused():
    with pytest.raises(ConfigurationError, match="FLEET_STORY_ACTOR_MEMORY_MB"):
        Settings(story_actor_memory_mb=-1)
