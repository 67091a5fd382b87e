"""`fleet-actors check`: one summary line and a Nagios-style exit code, for cron jobs and probes
(in the manner of `nats server check`).

Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The line is ``STATUS: what was found |
perfdata`` with Nagios performance data (``name=value;warn;crit``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

from fleet_actors.cli.common import add_settings_arguments, run, settings_from
from fleet_actors.errors import StoryError

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check",
        help="health in one line with a Nagios exit code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(check)
    check.add_argument("--lag-events-warn", type=int, default=1000, metavar="N", help="default 1000")
    check.add_argument("--lag-events-crit", type=int, default=10000, metavar="N", help="default 10000")
    check.add_argument("--lag-seconds-warn", type=float, default=30.0, metavar="S", help="default 30")
    check.add_argument("--lag-seconds-crit", type=float, default=300.0, metavar="S", help="default 300")
    check.add_argument("--parked-warn", type=int, default=1, metavar="N", help="parked events (default 1)")
    check.add_argument("--parked-crit", type=int, default=100, metavar="N", help="default 100")
    check.add_argument(
        "--paused-crit",
        type=float,
        default=3600.0,
        metavar="S",
        help="a rebuild's pause is a WARNING, CRITICAL once its job made no progress for S seconds (default 3600)",
    )
    check.add_argument(
        "--no-projectors", action="store_true", help="do not require live projectors (a heartbeat within 10 s)"
    )
    check.add_argument(
        "--gateway",
        nargs="?",
        const="",
        metavar="HOST:PORT",
        help="also ask the gRPC gateway for its health (default FLEET_GATEWAY_ADDRESS); not SERVING is CRITICAL",
    )
    check.set_defaults(func=_check)


@dataclass
class Verdict:
    status: int = OK
    findings: list[str] = field(default_factory=list)
    perfdata: list[str] = field(default_factory=list)

    def level(self, value: float, warn: float, crit: float) -> int:
        return CRITICAL if value >= crit else WARNING if value >= warn else OK

    def add(self, status: int, finding: str) -> None:
        self.status = max(self.status, status)
        if status != OK:
            self.findings.append(f"{finding} ({NAMES[status]})")

    def line(self, summary: str) -> str:
        text = "; ".join(self.findings) if self.findings else summary
        return f"{NAMES[self.status]}: {text} | {' '.join(self.perfdata)}".rstrip(" |")


def evaluate(args: argparse.Namespace, rows: list[dict[str, Any]], paused_by: str, job: dict[str, str]) -> Verdict:
    """The verdict on the projection status ``rows`` (``jobs.status.projection_status`` as dicts)."""
    verdict = Verdict()
    lag_events = max((r["lag_events"] for r in rows), default=0)
    lag_seconds = max((r["lag_seconds"] for r in rows), default=0.0)
    parked = sum(r["parked"] for r in rows)
    projectors = {r["projector"] for r in rows}
    down = {r["projector"] for r in rows if r["state"].startswith("down")}
    verdict.add(verdict.level(lag_events, args.lag_events_warn, args.lag_events_crit), f"lag {lag_events:,} events")
    verdict.add(verdict.level(lag_seconds, args.lag_seconds_warn, args.lag_seconds_crit), f"lag {lag_seconds:.1f} s")
    verdict.add(verdict.level(parked, args.parked_warn, args.parked_crit), f"{parked} parked events")
    if not args.no_projectors:
        if not rows:
            verdict.add(CRITICAL, "no live projector consumers (is `projections start` done?)")
        elif down:
            verdict.add(CRITICAL, f"projectors without a heartbeat: {', '.join(sorted(down))}")
    if paused_by:
        import time

        since_progress = time.time() - float(job.get("heartbeat", "0") or 0)
        status = CRITICAL if since_progress >= args.paused_crit else WARNING
        verdict.add(status, f"projectors paused by rebuild {paused_by}")
    if not compiled_decoder():
        verdict.add(
            WARNING,
            "this installation has no compiled decoder (reads decode 4-6x slower): reinstall with a C compiler",
        )
    verdict.perfdata += [
        f"lag_events={lag_events};{args.lag_events_warn};{args.lag_events_crit}",
        f"lag_seconds={lag_seconds:.1f}s;{args.lag_seconds_warn:g};{args.lag_seconds_crit:g}",
        f"parked={parked};{args.parked_warn};{args.parked_crit}",
        f"projectors_alive={len(projectors - down)};;",
    ]
    return verdict


def compiled_decoder() -> bool:
    from fleet_actors.codec import wire

    return wire.COMPILED


def _check(args: argparse.Namespace) -> int:
    from fleet_actors import console

    try:
        verdict, summary = _gather(args)
    except StoryError as error:
        verdict, summary = Verdict(CRITICAL, [error.message]), ""
    except Exception as error:  # a probe answers even when something unforeseen happens
        verdict, summary = Verdict(UNKNOWN, [f"{type(error).__name__}: {error}"]), ""
    if console.JSON_OUTPUT:
        print(json.dumps({"status": NAMES[verdict.status], "findings": verdict.findings, "summary": summary,
                          "perfdata": verdict.perfdata}))  # fmt: skip
    else:
        print(verdict.line(summary))
    return verdict.status


def _gather(args: argparse.Namespace) -> tuple[Verdict, str]:
    import dataclasses

    from fleet_actors.composition import open_projection_control
    from fleet_actors.jobs.status import projection_status

    settings = settings_from(args)

    async def gather() -> tuple[list[dict[str, Any]], str, dict[str, str]]:
        rows = [dataclasses.asdict(s) for s in await projection_status(settings)]
        control = await open_projection_control(settings)
        try:
            paused_by = await control.pausing_job() or ""
            job = await control.job_progress(paused_by) if paused_by else {}
        finally:
            await control.close()
        return rows, paused_by, job

    rows, paused_by, job = run(gather())
    verdict = evaluate(args, rows, paused_by, job)
    alive = sum(1 for p in {r["projector"] for r in rows} if not any(
        x["projector"] == p and x["state"].startswith("down") for x in rows))  # fmt: skip
    summary = (
        f"lag {max((r['lag_events'] for r in rows), default=0):,} events / "
        f"{max((r['lag_seconds'] for r in rows), default=0.0):.1f} s, {sum(r['parked'] for r in rows)} parked, "
        f"{alive} projectors alive"
    )
    if args.gateway is not None:
        from fleet_actors.tls import gateway_health

        try:
            health = gateway_health(settings, address=args.gateway or None, timeout=settings.nats_timeout)
        except StoryError as error:
            health = f"unreachable ({error.message})"
        summary += f", gateway {health}"
        if health != "SERVING":
            verdict.add(CRITICAL, f"gateway {health}")
    return verdict, summary
