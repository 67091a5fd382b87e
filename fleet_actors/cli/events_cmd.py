"""`fleet-actors events migrate --dry-run`: how many stored events of each type and schema version exist."""

from __future__ import annotations

import argparse
import dataclasses

from fleet_actors.cli.common import add_settings_arguments, print_table, run, settings_from
from fleet_actors.errors import InvalidCommand


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = commands.add_parser("events", help="the stored events themselves")
    sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    migrate = sub.add_parser(
        "migrate",
        help="report stored events per type and schema version (which upcasters are still in use)",
        description="The event log is immutable: old versions are upcast on every read, never rewritten. "
        "This reports how many events of each type and version are stored, so an upcaster can be retired "
        "once its version is gone (see docs/event-evolution.md).",
    )
    migrate.add_argument("--dry-run", action="store_true", help="report only (the only mode: the log is immutable)")
    add_settings_arguments(migrate)
    migrate.set_defaults(func=_migrate)
    from fleet_actors.cli.archive_cmd import add_export

    add_export(sub)


def _migrate(args: argparse.Namespace) -> int:
    from fleet_actors.adapters.jetstream.census import event_census

    if not args.dry_run:
        raise InvalidCommand(
            "the event log is immutable: old events are upcast when read, never rewritten; "
            "run with --dry-run to see which versions are stored",
            field="dry_run",
        )
    rows, unreadable = run(event_census(settings_from(args)))
    print_table(
        [{**dataclasses.asdict(r), "status": r.status} for r in rows],
        ["event_type", "schema_version", "count", "current_version", "status"],
    )
    total = sum(r.count for r in rows)
    print(f"{total:,} events; {unreadable:,} unreadable")
    blocking = unreadable or any(r.status.startswith(("UNKNOWN", "NEWER")) for r in rows)
    return 1 if blocking else 0
