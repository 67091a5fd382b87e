"""Entry points for `ray job submit` (``python -m fleet_actors.jobs.<name>``)."""
