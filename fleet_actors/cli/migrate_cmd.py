"""`fleet-actors migrate import|verify|mapping`: adopt event sourcing from an existing context graph."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fleet_actors.cli.common import ProgressLine, add_settings_arguments, print_table, run, settings_from

if TYPE_CHECKING:
    from fleet_actors.migration.compare import CompareReport
    from fleet_actors.migration.importer import ImportReport
    from fleet_actors.migration.legacy_reader import LegacySource
    from fleet_actors.migration.mapping import LegacyMapping
    from fleet_actors.ports.event_store import EventStore
    from fleet_actors.settings import Settings

_IMPORT_HELP = """Reads every story of the legacy graph and appends, per story, a genesis history of ordinary
creation commands through the normal event store (per-story concurrency checks, deterministic command ids).
Running it again imports nothing new: stories already in the log are reported, not touched (an import that
was interrupted part-way is resumed). Exit 0 when clean, 1 when legacy nodes could not be mapped (they are
listed; everything else was imported)."""
_VERIFY_HELP = """Compares, per story, the legacy graph with the state folded from the event log: title, phase,
subtasks with status and dependencies, decision ids, decision relations, impacts and milestone count.
Prints every difference and every unmappable legacy node; exit 1 on any."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `migrate import`, `migrate verify` and `migrate mapping` to the top-level subcommands."""
    migrate = commands.add_parser("migrate", help="adopt event sourcing from an existing context graph (Neo4j)")
    sub = migrate.add_subparsers(dest="migrate_command", required=True, metavar="ACTION")

    importing = sub.add_parser(
        "import", help="import the legacy graph as genesis event histories", description=_IMPORT_HELP
    )
    _add_legacy_arguments(importing)
    importing.add_argument("--dry-run", action="store_true", help="print what would be imported; write nothing")
    add_settings_arguments(importing)
    importing.set_defaults(func=_import)

    verify = sub.add_parser(
        "verify",
        help="compare the legacy graph with the event-sourced state; exit 1 on any difference",
        description=_VERIFY_HELP,
    )
    _add_legacy_arguments(verify)
    add_settings_arguments(verify)
    verify.set_defaults(func=_verify)

    mapping = sub.add_parser("mapping", help="print the mapping in effect as JSON (a starting point for --mapping)")
    mapping.add_argument("--mapping", metavar="FILE", help="a mapping file to check and print in full")
    mapping.set_defaults(func=_print_mapping)


def _since(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time, e.g. 2026-03-01T00:00:00Z") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _add_legacy_arguments(parser: argparse.ArgumentParser) -> None:
    legacy = parser.add_argument_group("legacy graph")
    legacy.add_argument(
        "--from-neo4j",
        dest="legacy_uri",
        required=True,
        metavar="URI",
        help="Bolt URI of the legacy graph, e.g. neo4j://graph:7687",
    )
    legacy.add_argument(
        "--user",
        default=os.environ.get("FLEET_LEGACY_NEO4J_USER", "neo4j"),
        help="default: FLEET_LEGACY_NEO4J_USER or neo4j",
    )
    legacy.add_argument(
        "--password",
        default=os.environ.get("FLEET_LEGACY_NEO4J_PASSWORD", ""),
        help="default: FLEET_LEGACY_NEO4J_PASSWORD (safer than the command line)",
    )
    legacy.add_argument("--database", help="default: the server's default database")
    legacy.add_argument(
        "--mapping",
        metavar="FILE",
        help="JSON mapping of labels, relationships and properties "
        "(default: the graph the projection writes; see `migrate mapping`)",
    )
    legacy.add_argument(
        "--since",
        type=_since,
        metavar="ISO",
        help="only stories whose legacy updated_at (or created_at) is at or after this time; "
        "a time without a zone is UTC",
    )
    legacy.add_argument("--story-prefix", default="", metavar="P", help="only stories whose id starts with P")


async def _open_log(settings: Settings, *, create: bool) -> EventStore | None:
    """The event store, or None when the stream does not exist and must not be created (read-only runs)."""
    from fleet_actors.composition import open_event_store, open_existing_stream

    if create:
        return await open_event_store(settings)
    return await open_existing_stream(settings)


def _reader_parts(args: argparse.Namespace) -> tuple[LegacySource, LegacyMapping]:
    from fleet_actors.migration.legacy_reader import LegacySource
    from fleet_actors.migration.mapping import load_mapping

    return LegacySource(args.legacy_uri, args.user, args.password, args.database), load_mapping(args.mapping)


def _import(args: argparse.Namespace) -> int:
    from fleet_actors.migration.importer import Action, import_legacy
    from fleet_actors.migration.legacy_reader import LegacyReader

    source, mapping = _reader_parts(args)
    settings = settings_from(args)

    progress = ProgressLine("stories")

    async def importing() -> ImportReport:
        reader = await LegacyReader.connect(source, mapping)
        try:
            store = await _open_log(settings, create=not args.dry_run)
            try:
                return await import_legacy(
                    reader,
                    store,
                    story_prefix=args.story_prefix,
                    since=args.since,
                    dry_run=args.dry_run,
                    progress=progress,
                )
            finally:
                if store is not None:
                    await store.close()
        finally:
            await reader.close()

    report = run(importing())
    progress.end()
    if report.dry_run:
        print("dry run: nothing was written")
    rows = [
        {"story": o.story_id, "action": o.action.value, "events": o.events, "problems": len(o.problems), "note": o.note}
        for o in report.outcomes
        if o.action != Action.ALREADY_IMPORTED  # re-runs stay short: only what changed or needs a look
    ]
    if rows:
        print_table(rows, ["story", "action", "events", "problems", "note"])
    for problem in report.problems:
        print(f"problem: {problem}")
    verb = "would import" if report.dry_run else "imported"
    started, resumed = report.count(Action.IMPORT), report.count(Action.RESUME)
    print(
        f"{verb}: {started} new stories, {resumed} resumed ({report.events} events); "
        f"{report.count(Action.ALREADY_IMPORTED)} already imported; {report.count(Action.EXISTS)} already in the log; "
        f"{len(report.problems)} problems"
    )
    return 1 if report.problems else 0


def _verify(args: argparse.Namespace) -> int:
    from fleet_actors.migration.compare import compare_legacy
    from fleet_actors.migration.legacy_reader import LegacyReader

    source, mapping = _reader_parts(args)
    settings = settings_from(args)

    async def comparing() -> CompareReport:
        reader = await LegacyReader.connect(source, mapping)
        try:
            store = await _open_log(settings, create=False)
            try:
                logged = [] if store is None else await store.story_ids()
                logged = [story_id for story_id in logged if story_id.startswith(args.story_prefix)]
                return await compare_legacy(
                    reader, store, story_prefix=args.story_prefix, since=args.since, log_story_ids=logged
                )
            finally:
                if store is not None:
                    await store.close()
        finally:
            await reader.close()

    report = run(comparing())
    for difference in report.differences:
        print(difference)
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"{report.stories} stories compared, {len(report.differences)} differences, {len(report.problems)} problems")
    return 0 if report.ok else 1


def _print_mapping(args: argparse.Namespace) -> int:
    from fleet_actors.migration.mapping import load_mapping

    print(json.dumps(load_mapping(args.mapping).to_json(), indent=2))
    return 0
