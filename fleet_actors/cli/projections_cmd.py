"""`fleet-actors projections status|start|stop|run|remove|deploy|switch|promote|drop`, `verify`, `dlq ...`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from fleet_actors.cli.common import add_settings_arguments, print_table, run, settings_from
from fleet_actors.errors import ConfigurationError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    projections = commands.add_parser("projections", help="the projector pool and its consumers")
    sub = projections.add_subparsers(dest="projections_command", required=True, metavar="ACTION")
    status = sub.add_parser("status", help="per consumer: pending, ack floor, lag in events and seconds, last error")
    add_settings_arguments(status)
    status.set_defaults(func=_status)
    start = sub.add_parser(
        "start",
        help="start FLEET_PROJECTORS projector actors on the Ray cluster (or --count actors hosting MODULE:ATTRIBUTE)",
    )
    start.add_argument(
        "target", nargs="?", default="", metavar="MODULE:ATTRIBUTE",
        help="a user projection to host in projector actors (importable on the cluster); default: the built-in pool",
    )  # fmt: skip
    start.add_argument("--count", type=int, default=1, help="runners of the hosted projection (partitions p %% count)")
    add_settings_arguments(start)
    start.set_defaults(func=_start)
    stop = sub.add_parser("stop", help="stop the projector actors hosting a projection (NAME-vN)")
    stop.add_argument("projection", metavar="NAME-vN")
    add_settings_arguments(stop)
    stop.set_defaults(func=_stop)
    remove = sub.add_parser(
        "remove", help="remove a user projection: its consumers, checkpoint, progress and held stories"
    )
    remove.add_argument("projection", metavar="NAME-vN")
    add_settings_arguments(remove)
    remove.set_defaults(func=_remove)
    run_cmd = sub.add_parser(
        "run", help="run a user projection in this process: catch up from the first event, then follow the log"
    )
    run_cmd.add_argument("target", metavar="MODULE:ATTRIBUTE", help="a projection, its class or a factory")
    _add_runner_arguments(run_cmd)
    add_settings_arguments(run_cmd)
    run_cmd.set_defaults(func=_run_projection)
    deploy = sub.add_parser(
        "deploy",
        help="run version N of the documents or the graph beside the live one, on its own target (blue/green)",
    )
    _add_read_model_arguments(deploy)
    _add_runner_arguments(deploy)
    deploy.add_argument(
        "--ray", action="store_true",
        help="run it in --count detached projector actors on the Ray cluster (restarted after a crash) and return",
    )  # fmt: skip
    deploy.set_defaults(func=_deploy)
    switch = sub.add_parser(
        "switch", help="readers read version N of the documents or the graph (1: the live one) once it verifies"
    )
    _add_read_model_arguments(switch)
    switch.add_argument("--no-check", action="store_true", help="switch without the caught-up and verify checks")
    switch.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS",
        help="the switch policy: retry the checks until they pass (at most SECONDS), then switch",
    )  # fmt: skip
    switch.set_defaults(func=_switch)
    switch_documents = sub.add_parser("switch-documents", help="`switch documents N`")
    switch_documents.add_argument("version", type=int, metavar="N")
    switch_documents.add_argument("--no-check", action="store_true", help="switch without the checks")
    add_settings_arguments(switch_documents)
    switch_documents.set_defaults(func=_switch, read_model="documents")
    promote = sub.add_parser(
        "promote",
        help="the live projectors write version N of the documents or the graph (readers read it; its runner can stop)",
    )
    _add_read_model_arguments(promote)
    promote.set_defaults(func=_promote)
    drop = sub.add_parser(
        "drop", help="drop version N of the documents or the graph (not read): its consumers, records and target"
    )
    _add_read_model_arguments(drop)
    drop.set_defaults(func=_drop)

    verify = commands.add_parser(
        "verify", help="replay the event log and compare it with both read models; exit 1 on any difference"
    )
    add_settings_arguments(verify)
    verify.add_argument("--story", action="append", metavar="ID", help="only this story (repeatable)")
    verify.add_argument("--graph-only", action="store_true", help="skip the Valkey context documents")
    verify.add_argument(
        "--version", type=int, default=None, metavar="N",
        help="version N of both read models (blue/green: `projections deploy`); default: the versions readers read",
    )  # fmt: skip
    verify.add_argument(
        "--projection", default="", metavar="MODULE:ATTRIBUTE",
        help="a projection of your own, through its verify hook, instead of the built-in read models",
    )  # fmt: skip
    verify.add_argument(
        "--no-census",
        action="store_true",
        help="skip the whole-graph counts and orphans (a graph database shared with other streams)",
    )
    verify.set_defaults(func=_verify)

    dlq = commands.add_parser("dlq", help="events parked by the projectors (poison events)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = dlq_sub.add_parser("list", help="parked events and the stories they hold")
    _add_projection_argument(listing)
    add_settings_arguments(listing)
    listing.set_defaults(func=_dlq_list)
    for action, text in (("retry", "apply the parked event again"), ("skip", "step over the parked event")):
        command = dlq_sub.add_parser(action, help=f"{text}, then catch the story up from the log")
        command.add_argument("story_id", metavar="STORY_ID")
        _add_projection_argument(command)
        add_settings_arguments(command)
        command.set_defaults(func=_dlq_release, action=action)


def _status(args: argparse.Namespace) -> int:
    from fleet_actors import console
    from fleet_actors.jobs.status import pausing_rebuild, projection_status

    settings = settings_from(args)
    rows = [dataclasses.asdict(s) for s in run(projection_status(settings))]
    paused_by = rows[0]["paused_by"] if rows else run(pausing_rebuild(settings))
    if paused_by and not console.JSON_OUTPUT:
        print(
            f"live projectors paused by rebuild {paused_by}: resume it (`fleet-actors rebuild --job-id {paused_by}` "
            f"with its options; `fleet-actors rebuild status {paused_by}`) or `fleet-actors rebuild cancel {paused_by}`"
        )
    print_table(rows, ["consumer", "projector", "state", "writes", "pending", "ack_pending", "ack_floor", "lag_events",
                       "lag_seconds", "applied", "parked", "last_error_at", "last_error"])  # fmt: skip
    _print_user_projections(args)
    return 0


# --- user projections (projections/api.py, issue #24) -------------------------------------------


def _add_projection_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--projection", default="", metavar="NAME-vN", help="a user projection's dead letters (default: the built-in)"
    )


def _print_user_projections(args: argparse.Namespace) -> None:
    from fleet_actors.jobs.projection_extensions import projection_rows

    rows = [dataclasses.asdict(r) for r in run(projection_rows(settings_from(args)))]
    if rows:
        print()
        print_table(rows, ["projection", "worker", "phase", "partitions", "remaining", "applied", "parked", "rate",
                           "eta_seconds", "lag_seconds", "last_error"])  # fmt: skip


def _report_progress(runner) -> None:
    p = runner.progress
    print(f"{runner.worker}: {p.phase}, {p.applied} applied, {p.rate}/s, {p.parked} parked", file=sys.stderr)


def _add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", type=int, default=0, help="this runner of --count (partitions p %% count)")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--until-caught-up", action="store_true", help="stop once nothing is pending")


def _check_share(settings, index: int, count: int) -> None:
    """Runner ``index`` of ``count`` must fit the stream's partitions: one line, before connecting."""
    if not 0 <= index < count <= settings.partitions:
        raise ConfigurationError(
            f"runner {index} of {count} does not fit the {settings.partitions} partitions "
            f"(--count 1 to {settings.partitions}, --index 0 to count - 1)", field="count",
        )  # fmt: skip


def _runner_options(args: argparse.Namespace) -> dict[str, Any]:
    from fleet_actors.projections.policy import ProjectorPolicy

    _check_share(settings_from(args), args.index, args.count)

    return {"index": args.index, "count": args.count, "policy": ProjectorPolicy(batch_size=args.batch_size),
            "until_caught_up": args.until_caught_up, "report": _report_progress}  # fmt: skip


def _run_projection(args: argparse.Namespace) -> int:
    from fleet_actors.jobs.projection_extensions import run_projection
    from fleet_actors.observability.metrics import serve_process_metrics
    from fleet_actors.projections.api import load

    options = _runner_options(args)  # checked before the projection is made (it may open its target)
    projection = load(args.target)
    settings = settings_from(args)
    serve_process_metrics(settings)
    applied = run(run_projection(settings, projection, **options))
    print(f"projection {projection.name}-v{projection.version}: {applied} events applied")
    return 0


def _add_read_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("read_model", choices=["documents", "graph"])
    parser.add_argument("version", type=int, metavar="N")
    add_settings_arguments(parser)


def _deploy(args: argparse.Namespace) -> int:
    from fleet_actors.jobs.projection_extensions import deploy_version, mark_deployed, version_id
    from fleet_actors.observability.metrics import serve_process_metrics

    settings = settings_from(args)
    if args.ray:
        from fleet_actors.actors.projector_actor import HostedProjection

        if args.version < 2:
            raise ConfigurationError("version 1 is the live read model the projectors write", field="version")
        _check_share(settings, 0, args.count)
        hosted = HostedProjection(read_model=args.read_model, version=args.version)
        run(mark_deployed(settings, args.read_model, args.version))
        return _host(settings, hosted, version_id(args.read_model, args.version), args.count)
    serve_process_metrics(settings)
    applied = run(deploy_version(settings, args.read_model, args.version, **_runner_options(args)))
    print(f"{args.read_model} v{args.version}: {applied} events applied")
    return 0


def _switch(args: argparse.Namespace) -> int:
    from fleet_actors.jobs.projection_extensions import switch_readers, switch_when_ready

    settings = settings_from(args)
    if getattr(args, "wait", 0) > 0 and not args.no_check:
        differences = run(switch_when_ready(settings, args.read_model, args.version, wait=args.wait,
                                            on_wait=lambda why: print(f"not yet: {why}", file=sys.stderr)))  # fmt: skip
    else:
        differences = run(switch_readers(settings, args.read_model, args.version, check=not args.no_check))
    for difference in differences:
        print(difference)
    if differences:
        print(f"{len(differences)} differences: readers stay where they are")
        return 1
    print(f"readers now read version {args.version} of the {args.read_model}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from fleet_actors.jobs.projection_extensions import promote_version, version_id

    run(promote_version(settings_from(args), args.read_model, args.version))
    print(
        f"the live projectors write version {args.version} of the {args.read_model} (they reopen on it within "
        f"seconds); stop its own runners (`fleet-actors projections stop {version_id(args.read_model, args.version)}`"
        " or the `deploy` process) once `projections status` shows them writing it"
    )
    return 0


def _drop(args: argparse.Namespace) -> int:
    from fleet_actors.jobs.projection_extensions import drop_version

    run(drop_version(settings_from(args), args.read_model, args.version))
    print(f"{args.read_model} v{args.version} dropped", file=sys.stderr)
    return 0


def _remove(args: argparse.Namespace) -> int:
    from fleet_actors.jobs.projection_extensions import remove_projection

    deleted = run(remove_projection(settings_from(args), args.projection))
    print(f"projection {args.projection} removed ({len(deleted)} consumers deleted)", file=sys.stderr)
    return 0


def _start(args: argparse.Namespace) -> int:
    from fleet_actors.actors.projector_actor import HostedProjection, start_projectors
    from fleet_actors.client import connect_ray
    from fleet_actors.projections.api import load, projection_id

    settings = settings_from(args)
    if args.target:
        _check_share(settings, 0, args.count)  # before the projection is made (it may open its target)
        return _host(settings, HostedProjection(target=args.target), projection_id(load(args.target)), args.count)
    connect_ray(settings, start_local=False)
    handles = start_projectors(settings)
    print(f"{len(handles)} projectors running in namespace {settings.ray_namespace}")
    return 0


def _host(settings, hosted, projection: str, count: int) -> int:
    from fleet_actors.actors.projector_actor import host_projection
    from fleet_actors.client import connect_ray

    connect_ray(settings, start_local=False)
    handles = host_projection(settings, hosted, projection, count)
    print(f"{projection}: {len(handles)} runners in projector actors, namespace {settings.ray_namespace} "
          f"(`fleet-actors projections status`; stop with `fleet-actors projections stop {projection}`)")  # fmt: skip
    return 0


def _stop(args: argparse.Namespace) -> int:
    from fleet_actors.actors.projector_actor import stop_hosted
    from fleet_actors.client import connect_ray

    settings = settings_from(args)
    connect_ray(settings, start_local=False)
    stopped = stop_hosted(settings, args.projection)
    if not stopped:
        print(f"no projector actor hosts {args.projection} in namespace {settings.ray_namespace}", file=sys.stderr)
        return 1
    print(f"{args.projection}: {len(stopped)} runners stopped (its consumers keep their position)", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from fleet_actors import console
    from fleet_actors.cli import common
    from fleet_actors.jobs.verify import verify

    if args.projection:
        return _verify_projection(args)
    progress = common.ProgressLine("stories")
    census = not args.story and not args.no_census
    report = run(
        verify(
            settings_from(args),
            args.story,
            documents=not args.graph_only,
            census=census,
            progress=progress,
            version=args.version,
        )
    )
    progress.end()
    if console.JSON_OUTPUT:
        common.print_record(
            {"ok": report.ok, "stories": len(report.stories), "differences": report.differences, "census": census}
        )
        return 0 if report.ok else 1
    for difference in report.differences:
        print(difference)
    print(f"{len(report.stories)} stories checked, {len(report.differences)} differences")
    return 0 if report.ok else 1


def _verify_projection(args: argparse.Namespace) -> int:
    from fleet_actors import console
    from fleet_actors.cli import common
    from fleet_actors.jobs.projection_extensions import verify_against_replay
    from fleet_actors.projections.api import load, optional_hook, projection_id

    projection = load(args.projection)

    async def verified() -> dict[str, list[str]]:
        try:
            return await verify_against_replay(settings_from(args), projection, args.story or ())
        finally:
            close = optional_hook(projection, "close")
            if close is not None:
                await close()  # type: ignore[misc]

    differences = run(verified())
    found = [d for story_differences in differences.values() for d in story_differences]
    if console.JSON_OUTPUT:
        common.print_record({"ok": not found, "projection": projection_id(projection), "differences": found})
        return 0 if not found else 1
    for difference in found:
        print(difference)
    print(f"{projection_id(projection)}: {len(differences)} stories differ, {len(found)} differences")
    return 0 if not found else 1


async def _dead_letters(settings, projection: str = ""):
    from fleet_actors.adapters.jetstream import connect_nats
    from fleet_actors.composition import open_dead_letters

    nc = await connect_nats(settings)
    try:
        dead_letters, index = await open_dead_letters(settings, nc, projection)
    except BaseException:
        await nc.close()
        raise
    return nc, index, dead_letters


def _dlq_list(args: argparse.Namespace) -> int:
    async def listing():
        nc, cache, dead_letters = await _dead_letters(settings_from(args), args.projection)
        try:
            return await dead_letters.held()
        finally:
            await cache.close()
            await nc.close()

    held = run(listing())
    print_table(
        [dataclasses.asdict(p) for p in held.values()],
        ["story_id", "version", "stream_sequence", "consumer", "projection", "deliveries", "parked_at", "error"],
    )
    return 0


def _dlq_release(args: argparse.Namespace) -> int:
    async def release():
        nc, cache, dead_letters = await _dead_letters(settings_from(args), args.projection)
        try:
            return await dead_letters.request_release(args.story_id, args.action)
        finally:
            await cache.close()
            await nc.close()

    parked = run(release())
    print(f"{args.action}: story {parked.story_id} v{parked.version} handed to {parked.consumer}", file=sys.stderr)
    return 0
