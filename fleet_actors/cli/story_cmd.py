"""`fleet-actors story show|history|at|rebuild-state ID`: one story, from its actor (the source of truth);
``history`` and ``at`` read the log in this process (FLEET_DIRECT_READS, docs/architecture.md)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import TYPE_CHECKING

from fleet_actors.cli.common import add_settings_arguments, print_table, settings_from
from fleet_actors.errors import InvalidCommand

if TYPE_CHECKING:
    from fleet_actors.client import FleetClient


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    story = commands.add_parser("story", help="one story, read through its actor")
    sub = story.add_subparsers(dest="story_command", required=True, metavar="ACTION")
    for name, text in (
        ("show", "the story's current state"),
        ("history", "its events, decoded (upcast to the current schema)"),
        ("at", "its state at a time (--time ISO) or right after a version (--version N)"),
        ("rebuild-state", "replay its whole log in its actor, ignoring snapshots, and take a fresh snapshot"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("story_id", metavar="STORY_ID")
        add_settings_arguments(command)
        command.set_defaults(func=_run, action=name)
        if name == "history":
            command.add_argument("--from-version", type=int, default=1)
            command.add_argument("--limit", type=int)
        if name == "at":
            point = command.add_mutually_exclusive_group(required=True)
            point.add_argument("--time", help="ISO-8601 time with a timezone")
            point.add_argument("--version", type=int)


def _run(args: argparse.Namespace) -> int:
    from fleet_actors.client import FleetClient

    client = FleetClient.connect(settings=settings_from(args), start_local=False)
    try:
        return _show(client, args)
    finally:
        client.close()


def _show(client: FleetClient, args: argparse.Namespace) -> int:
    if args.action == "history":
        events = client.history(args.story_id, args.from_version, args.limit)
        print_table(
            [
                {
                    "version": e.version,
                    "time": e.timestamp.isoformat(),
                    "type": e.event_type,
                    "actor": e.actor,
                    "command": e.command_id,
                    "schema": e.schema_version,
                }
                for e in events
            ],
            ["version", "time", "type", "actor", "command", "schema"],
        )
        return 0
    if args.action == "rebuild-state":
        state = client.rebuild_state(args.story_id)
    elif args.action == "at":
        point = _point(args)
        state = client.get_story_at(args.story_id, point)
        if isinstance(point, int) and state.version < point:
            raise InvalidCommand(
                f"story {args.story_id!r} is at version {state.version}; --version {point} is beyond it",
                field="version",
            )
    else:
        state = client.get_story(args.story_id)
    from fleet_actors.codec.state import state_to_json

    print(json.dumps(state_to_json(state), indent=2))
    return 0


def _point(args: argparse.Namespace) -> datetime | int:
    if args.version is not None:
        if args.version < 1:
            raise InvalidCommand(f"--version must be 1 or more, not {args.version}", field="version")
        return args.version
    try:
        at = datetime.fromisoformat(args.time)
    except ValueError:
        raise InvalidCommand(f"--time {args.time!r} is not an ISO-8601 time", field="time") from None
    if at.tzinfo is None:
        raise InvalidCommand("--time needs a timezone, e.g. 2026-11-01T12:00:00+00:00", field="time")
    return at
