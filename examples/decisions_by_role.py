"""Example user projection: the decisions of every story in a SQLite table, queried per role.

    python -m examples.decisions_by_role seed  --stories 20 --events 30      # a log to project
    python -m examples.decisions_by_role run   --db decisions.db --until-caught-up
    python -m examples.decisions_by_role query --db decisions.db

Settings come from the FLEET_* variables (FLEET_NATS_URL, FLEET_VALKEY_URL, FLEET_STREAM,
FLEET_ARCHIVE_URL, ...), as for every fleet-actors tool. See docs/projections.md.

The projection keeps its own checkpoint (``applied_versions``) in the same SQLite transaction as
its rows, so each event changes the table exactly once, across crashes and redeliveries.
``stories.events_applied`` counts the events applied per story: equal to the story's version
when nothing was applied twice.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import threading
from collections.abc import Mapping, Sequence

from fleet_actors.domain.events import DecisionAdded, DecisionStatusChanged, EventEnvelope
from fleet_actors.projections import api

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    story_id TEXT NOT NULL, decision_id TEXT NOT NULL, role TEXT NOT NULL, decision_type TEXT NOT NULL,
    title TEXT NOT NULL, status TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL,
    PRIMARY KEY (story_id, decision_id)
);
CREATE INDEX IF NOT EXISTS decisions_by_role ON decisions (role);
CREATE TABLE IF NOT EXISTS stories (
    story_id TEXT PRIMARY KEY, version INTEGER NOT NULL, events_applied INTEGER NOT NULL
);
"""


def role_of(envelope: EventEnvelope, event: DecisionAdded) -> str:
    """Who decided: the decision's ``decided_by``, else the actor that recorded it."""
    return event.decided_by or envelope.actor or "unassigned"


class DecisionsByRole:
    name = "decisions-by-role"
    version = 1

    def __init__(self, path: str = "decisions.db") -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    # --- what the framework calls ---------------------------------------------------------------

    async def apply(self, batch: Mapping[str, Sequence[EventEnvelope]]) -> None:
        await asyncio.to_thread(self._apply, batch)

    async def applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        return await asyncio.to_thread(self._versions, story_ids)

    async def verify(self, story_id: str, events: Sequence[EventEnvelope]) -> list[str]:
        """Compare this story's rows with a replay of its events."""
        expected = {row[1]: row for row in expected_rows(story_id, events)}
        actual = {row[1]: row for row in await asyncio.to_thread(self.rows, story_id)}
        differences = [f"{story_id}/{d}: expected {expected.get(d)}, found {actual.get(d)}"
                       for d in sorted(set(expected) | set(actual)) if expected.get(d) != actual.get(d)]  # fmt: skip
        versions = self._versions([story_id])
        if events and versions[story_id] != events[-1].version:
            differences.append(f"{story_id}: checkpoint at {versions[story_id]}, log at {events[-1].version}")
        return differences

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:  # after a transaction in flight has ended
            self._db.close()

    # --- SQLite ---------------------------------------------------------------------------------

    def _apply(self, batch: Mapping[str, Sequence[EventEnvelope]]) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for story_id, events in batch.items():
                    for envelope in events:
                        apply_event(db, envelope)
                    db.execute(
                        "INSERT INTO stories (story_id, version, events_applied) VALUES (?, ?, ?) "
                        "ON CONFLICT (story_id) DO UPDATE SET version = excluded.version, "
                        "events_applied = events_applied + excluded.events_applied",
                        (story_id, events[-1].version, len(events)),
                    )
                db.execute("COMMIT")  # rows and checkpoint together: exactly once
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        with self._lock:
            out = dict.fromkeys(story_ids, 0)
            for start in range(0, len(story_ids), 500):
                chunk = list(story_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                query = f"SELECT story_id, version FROM stories WHERE story_id IN ({marks})"
                out.update(dict(self._db.execute(query, chunk).fetchall()))
            return out

    def rows(self, story_id: str) -> list[tuple[str, str, str, str, str, str, int]]:
        with self._lock:
            return self._db.execute(
                "SELECT story_id, decision_id, role, decision_type, title, status, version FROM decisions "
                "WHERE story_id = ? ORDER BY decision_id",
                (story_id,),
            ).fetchall()

    def per_role(self) -> list[tuple[str, int]]:
        with self._lock:
            return self._db.execute(
                "SELECT role, count(*) FROM decisions GROUP BY role ORDER BY count(*) DESC, role"
            ).fetchall()

    def events_applied(self) -> dict[str, tuple[int, int]]:
        """story -> (version, events applied): equal when nothing was applied twice."""
        with self._lock:
            return {s: (v, n) for s, v, n in self._db.execute("SELECT story_id, version, events_applied FROM stories")}


def apply_event(db: sqlite3.Connection | _Rows, envelope: EventEnvelope) -> None:
    event = envelope.payload
    if isinstance(event, DecisionAdded):
        db.execute(
            "INSERT INTO decisions (story_id, decision_id, role, decision_type, title, status, version) "
            "VALUES (?, ?, ?, ?, ?, '', ?) ON CONFLICT (story_id, decision_id) DO UPDATE SET role = excluded.role, "
            "decision_type = excluded.decision_type, title = excluded.title, version = excluded.version",
            (envelope.story_id, event.decision_id, role_of(envelope, event), event.decision_type, event.title,
             envelope.version),
        )  # fmt: skip
    elif isinstance(event, DecisionStatusChanged):
        db.execute(
            "UPDATE decisions SET status = ?, version = ? WHERE story_id = ? AND decision_id = ?",
            (event.status, envelope.version, envelope.story_id, event.decision_id),
        )
    # every other event type leaves the table as it is (a dlq skip's stand-in included)


class _Rows:
    """A replay target for ``verify``: the same statements on a private in-memory database."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.executescript(SCHEMA)

    def execute(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)


def expected_rows(story_id: str, events: Sequence[EventEnvelope]) -> list[tuple[str, str, str, str, str, str, int]]:
    replay = _Rows()
    for envelope in events:
        apply_event(replay, envelope)
    return replay.db.execute(
        "SELECT story_id, decision_id, role, decision_type, title, status, version FROM decisions "
        "WHERE story_id = ? ORDER BY decision_id",
        (story_id,),
    ).fetchall()


# --- the command line ---------------------------------------------------------------------------


async def run(db: str, *, until_caught_up: bool, batch_size: int = 500, index: int = 0, count: int = 1) -> int:
    """Register the projection, catch it up from the first event and keep it live (until SIGTERM)."""
    from fleet_actors.jobs.projection_extensions import run_projection
    from fleet_actors.projections.policy import ProjectorPolicy
    from fleet_actors.settings import Settings

    projection = api.register(lambda: DecisionsByRole(db), replace=True)

    def report(runner) -> None:
        progress = runner.progress
        print(f"{progress.phase}: {progress.applied} applied, {progress.rate}/s", file=sys.stderr, flush=True)

    await run_projection(
        Settings.from_env(), projection, index=index, count=count, policy=ProjectorPolicy(batch_size=batch_size),
        until_caught_up=until_caught_up, report=report,
    )  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.decisions_by_role")
    sub = parser.add_subparsers(dest="command", required=True)
    seed = sub.add_parser("seed", help="write generated stories into the event stream")
    seed.add_argument("--stories", type=int, default=20)
    seed.add_argument("--events", type=int, default=30)
    seed.add_argument("--prefix", default="example")
    for name in ("run", "query"):
        command = sub.add_parser(name)
        command.add_argument("--db", default="decisions.db")
    sub.choices["run"].add_argument("--until-caught-up", action="store_true", help="stop once nothing is pending")
    sub.choices["run"].add_argument("--batch-size", type=int, default=500, help="events per apply at most")
    args = parser.parse_args(argv)
    if args.command == "seed":
        from fleet_actors.loadgen.seed import seed as seed_log
        from fleet_actors.settings import Settings

        report = asyncio.run(seed_log(Settings.from_env(), args.stories, args.events, prefix=args.prefix))
        print(report)
        return 0
    if args.command == "run":
        return asyncio.run(run(args.db, until_caught_up=args.until_caught_up, batch_size=args.batch_size))
    for role, decisions in DecisionsByRole(args.db).per_role():
        print(f"{role}\t{decisions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
