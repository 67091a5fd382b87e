"""`fleet-actors archive run | status | verify` and `fleet-actors events export`.

The lead wires ``register(commands)`` into ``cli/main.py``; ``add_export(events_subparsers)`` is
called by ``cli/events_cmd.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from datetime import datetime

from fleet_actors.cli.common import (
    ProgressLine,
    add_settings_arguments,
    print_record,
    print_table,
    run,
    settings_from,
)
from fleet_actors.errors import ConfigurationError, InvalidCommand
from fleet_actors.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``archive`` command and its actions."""
    archive = commands.add_parser(
        "archive",
        help="archive the event stream to Parquet segments; retention behind the archive",
        description="Copies the event stream to append-only Parquet segments in FLEET_ARCHIVE_URL (a folder or "
        "s3://bucket/prefix) and, when FLEET_STREAM_MAX_AGE is set, deletes aged events from the stream once they "
        "are archived, verified and covered by a snapshot (docs/storage.md).",
    )
    sub = archive.add_subparsers(dest="archive_command", required=True, metavar="ACTION")
    run_parser = sub.add_parser("run", help="archive what is new, then apply retention (once, or --every SECONDS)")
    run_parser.add_argument("--every", type=float, metavar="SECONDS", help="repeat until SIGINT/SIGTERM")
    run_parser.add_argument("--segment-events", type=int, default=50_000, help="events per segment (default 50000)")
    run_parser.add_argument("--no-retention", action="store_true", help="archive only; delete nothing")
    run_parser.set_defaults(func=_run)
    status = sub.add_parser("status", help="segments, events, bytes, archived and purged sequences, lag")
    status.set_defaults(func=_status)
    verify = sub.add_parser("verify", help="check every segment against the manifest's checksums; exit 1 on a problem")
    verify.set_defaults(func=_verify)
    for parser in (run_parser, status, verify):
        _add_archive_arguments(parser)


def add_export(events: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``events export`` (called by cli/events_cmd.py)."""
    export = events.add_parser(
        "export",
        help="export events (archive + stream) for analytics",
        description="Writes every event stamped at or after --since, from the archive and then the stream, "
        "with decoded columns and the exact stored bytes.",
    )
    export.add_argument("--since", help="ISO time with a zone, e.g. 2026-01-01T00:00:00Z (default: everything)")
    export.add_argument("--format", choices=["parquet"], default="parquet")
    export.add_argument("--out", required=True, help="a file path or fsspec URL (s3://bucket/key.parquet)")
    _add_archive_arguments(export)
    export.set_defaults(func=_export)


def _add_archive_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser)
    parser.add_argument("--archive-url", help="archive folder or s3://bucket/prefix (FLEET_ARCHIVE_URL)")


def _settings(args: argparse.Namespace, *, required: bool = True) -> Settings:
    settings = settings_from(args)
    if getattr(args, "archive_url", None):
        settings = settings.replace(archive_url=args.archive_url)
    if required and not settings.archive_url:
        raise ConfigurationError("no archive configured: set FLEET_ARCHIVE_URL or pass --archive-url")
    return settings


def _run(args: argparse.Namespace) -> int:
    from fleet_actors.composition import open_archiver

    settings = _settings(args)
    if args.every is not None and args.every <= 0:
        raise InvalidCommand("--every must be positive", field="every")

    async def main() -> int:
        archiver = await open_archiver(settings, segment_events=args.segment_events)
        try:
            if args.every is None:
                progress = ProgressLine("sequences archived")
                archived = await archiver.archive_once(progress=progress)
                progress.end()
                print(
                    f"archived {archived.events:,} events in {archived.segments} segments "
                    f"({archived.rate:,.0f} events/s); archived through {archived.archived_through}"
                )
                if not args.no_retention:
                    retention = await archiver.enforce_retention()
                    waiting = f"; {retention.waiting}" if retention.waiting else ""
                    print(
                        f"retention: purged through {retention.purged_through} ({retention.stories} stories, "
                        f"{retention.snapshots_taken} snapshots taken){waiting}"
                    )
                return 0
            from fleet_actors.observability.metrics import serve_process_metrics

            serve_process_metrics(settings)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await archiver.run_forever(args.every, stop)
            return 0
        finally:
            await archiver.close()

    return run(main())


def _status(args: argparse.Namespace) -> int:
    from fleet_actors.adapters.archive.segments import Archive, summarize
    from fleet_actors.adapters.jetstream import connect_nats, nats_errors

    settings = _settings(args)

    async def main() -> dict[str, object]:
        summary = summarize(await Archive(settings.archive_url, settings.stream_name).manifest())
        nc = await connect_nats(settings, name="fleet-archive-status")
        try:
            with nats_errors(f"reading stream {settings.stream_name}"):
                info = await nc.jsm().stream_info(settings.stream_name)
            summary.update(
                stream_first_seq=info.state.first_seq,
                stream_last_seq=info.state.last_seq,
                stream_messages=info.state.messages,
                stream_bytes=info.state.bytes,
                lag_events=max(0, info.state.last_seq - int(summary["archived_through"])),
            )
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        return summary

    summary = run(main())
    print_record(summary)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from fleet_actors.adapters.archive.segments import Archive

    settings = _settings(args)
    archive = Archive(settings.archive_url, settings.stream_name)

    async def main() -> tuple[int, list, list[str]]:
        manifest = await archive.manifest()
        problems = await archive.verify(manifest)
        orphans = await asyncio.to_thread(archive.orphans_sync, manifest)
        return len(manifest.segments), problems, orphans

    count, problems, orphans = run(main())
    for orphan in orphans:
        print(f"note: {orphan} is not in the manifest (left by an interrupted run; the next run removes it)")
    if problems:
        print_table([{"segment": p.segment, "problem": p.problem} for p in problems], ["segment", "problem"])
        print(f"{len(problems)} problem(s) in {count} segments")
        return 1
    print(f"{count} segments verified")
    return 0


def _export(args: argparse.Namespace) -> int:
    from fleet_actors.composition import export_events

    settings = _settings(args, required=False)
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidCommand(f"--since {args.since!r} is not an ISO time", field="since") from None
    progress = ProgressLine("events read")
    report = run(export_events(settings, args.out, since=since, progress=progress))
    progress.end()
    print(
        f"exported {report.events:,} events ({report.from_archive:,} from the archive, "
        f"{report.from_stream:,} from the stream) to {args.out}: {report.bytes:,} bytes"
    )
    return 0
