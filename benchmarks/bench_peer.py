"""The issue's workloads against the library a Python team would otherwise pick: Python ``eventsourcing``
(9.5.6, the ``bench`` extra) on SQLite with ``synchronous=FULL`` and, when a server is given
(``--postgres-dsn`` or BENCH_POSTGRES_DSN), on PostgreSQL, next to fleet-actors through its public
client, in alternating rounds on the same machine.

The peer's aggregate is a story with the same kinds of event: a summary recorded (the commands; the
state keeps the last one, as ours does) and a milestone recorded (the 10,000-event story read back:
the state keeps every milestone, as ours does, so it grows with the story), in an ``Application``
with its aggregate cache (fast-forwarded from the database on every get, deep-copied out: the
library's defaults) and a snapshot every ``snapshot_every`` events, as ours. Its writers are
threads that get, record and save, and on a version conflict get again and retry (optimistic
concurrency, the library's way); on the one contended story it also runs with one lock per story,
the way our actor serialises commands.

Every figure is measured in this run; every ``*_vs_*`` ratio reads "how many times better we are":
ours over the peer for rates, the peer's over ours for times and CPU (below 1: the peer is better).
CPU counts every process the side runs: ours, this driver and all its descendants (the servers, Ray's
processes and workers); the peer, this driver (its threads) and the PostgreSQL server's processes
when the server runs on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import ray

from benchmarks.harness import BenchContext, latency_summary
from fleet_actors import FleetClient
from fleet_actors.actors.naming import story_actor_name
from fleet_actors.domain.commands import RecordMilestone

STORIES = int(os.environ.get("BENCH_PEER_STORIES", "50"))
WRITERS = int(os.environ.get("BENCH_PEER_WRITERS", "8"))
#: rounds of each command workload, each side ROUND_SECONDS per round, taking turns
ROUNDS = int(os.environ.get("BENCH_PEER_ROUNDS", "4"))
ROUND_SECONDS = float(os.environ.get("BENCH_PEER_ROUND_SECONDS", "3"))
EVENTS = int(os.environ.get("BENCH_PEER_EVENTS", "10000"))
#: single commands at the end of the big story, after the batches (so both sides read a tail after a snapshot)
TAIL = int(os.environ.get("BENCH_PEER_TAIL", "50"))
REPEATS = int(os.environ.get("BENCH_PEER_REPEATS", "5"))
IDLE_SECONDS = float(os.environ.get("BENCH_PEER_IDLE_SECONDS", "10"))
BATCH = 100  # commands in one append while filling the big story (rules.MAX_BATCH)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- CPU of process trees, from /proc ---------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every live process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # exited while we were looking
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid ...; utime and stime are fields 14, 15
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return table


def tree_cpu_seconds(roots: tuple[int, ...], *, include_roots: bool = True) -> float:
    """CPU seconds used so far by the processes under ``roots`` (a process that exits takes its share along)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, list(roots)
    while todo:
        pid = todo.pop()
        if pid in table and (include_roots or pid not in roots):
            total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


# --- the peer: eventsourcing --------------------------------------------------------------------


def _peer_classes(snapshot_every: int) -> tuple[type, type]:
    """The peer's story aggregate and its application, snapshotting every ``snapshot_every`` events."""
    from eventsourcing.application import Application

    story_class = _peer_story_class()

    class PeerStories(Application):
        snapshotting_intervals = {story_class: snapshot_every}

    return story_class, PeerStories


@functools.cache  # the library registers event classes by their topic: one class per process
def _peer_story_class() -> type:
    """The peer's story (imported here: ``eventsourcing`` is an optional extra)."""
    from eventsourcing.domain import Aggregate, event

    class PeerStory(Aggregate):
        @event("Created")
        def __init__(self, story_id: str, title: str) -> None:
            self.story_id = story_id
            self.title = title
            self.phase = "DESIGN"
            self.last_summary = ""
            self.milestones: list[dict[str, str]] = []

        @staticmethod
        def create_id(story_id: str, title: str) -> UUID:
            return peer_id(story_id)

        @event("SummaryRecorded")
        def record_summary(self, summary: str) -> None:
            self.last_summary = summary

        def record_milestone(self, milestone_id: str, kind: str, description: str) -> None:
            """As ours: refused if the id is taken (a scan, as ours), else one event."""
            if any(m["milestone_id"] == milestone_id for m in self.milestones):
                raise ValueError(f"milestone {milestone_id!r} already recorded")
            self._milestone_recorded(milestone_id, kind, description)

        @event("MilestoneRecorded")
        def _milestone_recorded(self, milestone_id: str, kind: str, description: str) -> None:
            self.milestones.append({"milestone_id": milestone_id, "kind": kind, "description": description})

    return PeerStory


def peer_id(story_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, story_id)


@dataclass
class Peer:
    """One peer backend: a way to open the application (twice: a fresh one has an empty cache) and the
    processes of its server, if they run here."""

    name: str
    open: Callable[[], Any]
    server_pids: tuple[int, ...] = ()
    cleanup: Callable[[], None] = lambda: None

    def cpu_seconds(self) -> float:
        """This process's CPU (the peer runs in it) and its server's."""
        return sum(os.times()[:2]) + (tree_cpu_seconds(self.server_pids) if self.server_pids else 0.0)


def sqlite_peer(app_class: type, data_dir: Path) -> tuple[Peer, dict[str, Any]]:
    db = data_dir / "peer.sqlite"
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(db), "AGGREGATE_CACHE_MAXSIZE": "1000"}

    def open_app() -> Any:
        app = app_class(env=env)
        pool = app.factory.datastore.pool
        create = pool._create_connection

        def create_full() -> Any:  # every connection fsyncs each commit (WAL mode: the WAL file)
            connection = create()
            connection.cursor().execute("PRAGMA synchronous=FULL")
            return connection

        pool._create_connection = create_full
        return app

    app = open_app()
    with app.factory.datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA synchronous")
        level = cursor.fetchone()[0]
        cursor.execute("PRAGMA journal_mode")
        journal = cursor.fetchone()[0]
    app.close()
    synchronous = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, level)
    return Peer("sqlite", open_app), {"peer_sqlite_synchronous": synchronous, "peer_sqlite_journal_mode": journal}


def postgres_peer(app_class: type, dsn: str, tag: str) -> tuple[Peer, dict[str, Any]]:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    schema = f"fleet_bench_{tag}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        fsync = conn.execute("SHOW fsync").fetchone()[0]
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
        version = conn.execute("SHOW server_version").fetchone()[0]
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        postmaster = _local_parent(backend, "postgres")
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname", "postgres")),
        "POSTGRES_HOST": str(params.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(params.get("port", "5432")),
        "POSTGRES_USER": str(params.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(params.get("password", "")),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": str(WRITERS + 2),
        "AGGREGATE_CACHE_MAXSIZE": "1000",
    }

    def drop_schema() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    peer = Peer("postgres", lambda: app_class(env=env), (postmaster,) if postmaster else (), drop_schema)
    return peer, {
        "peer_postgres_version": version,
        "peer_postgres_fsync": fsync,
        "peer_postgres_synchronous_commit": sync_commit,
        "peer_postgres_cpu_counted": "yes" if postmaster else "no (not a server on this machine)",
    }


def _local_parent(pid: int, comm: str) -> int | None:
    """The parent of ``pid`` if ``pid`` is a ``comm`` process on this machine (a PostgreSQL backend's
    parent is the server's postmaster), else None: a remote server's CPU is not counted."""
    try:
        if not Path(f"/proc/{pid}/comm").read_text().startswith(comm):
            return None
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _peer_command(app: Any, story_id: UUID, summary: str, lock: threading.Lock | None) -> int:
    """One command the library's way: get (cached, fast-forwarded), record, save; on a version conflict
    get again and retry. Returns the number of conflicts."""
    from eventsourcing.persistence import RecordConflictError

    conflicts = 0
    with lock or contextlib.nullcontext():
        while True:
            story = app.repository.get(story_id)
            story.record_summary(summary)
            try:
                app.save(story)
                return conflicts
            except RecordConflictError:
                conflicts += 1


def _peer_round(
    app: Any, stories: list[UUID], locks: dict[UUID, threading.Lock] | None, seconds: float = ROUND_SECONDS
) -> dict[str, Any]:
    """WRITERS threads send commands for ``seconds``; a command waits for its commit."""
    latencies: list[float] = []
    conflicts: list[int] = []  # one entry per command (list.append is atomic across threads)
    deadline = time.perf_counter() + seconds

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            story = rng.choice(stories)
            started = time.perf_counter()
            summary = f"progress note {seed}-{len(latencies)}"
            conflicts.append(_peer_command(app, story, summary, locks[story] if locks else None))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "latencies": latencies, "commands": len(conflicts), "conflicts": sum(conflicts)}


def _peer_fill(app: Any, story_class: type, story_id: str, batches: list[int]) -> None:
    """The big story: created, then ``batches`` of milestones, each batch one save."""
    story = story_class(story_id, "big story")
    app.save(story)
    for n, size in enumerate(batches):
        story = app.repository.get(story.id)
        for i in range(size):
            story.record_milestone(uuid.uuid4().hex, "progress", f"milestone {n}-{i}")
        app.save(story)


# --- ours: through the public client ------------------------------------------------------------


async def _our_round(client: FleetClient, stories: list[str], seconds: float = ROUND_SECONDS) -> dict[str, Any]:
    """WRITERS coroutines send commands through the client for ``seconds``; each waits for its reply."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def writer(seed: int) -> int:
        rng = random.Random(seed)
        done = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await client.aio.record_summary(rng.choice(stories), f"progress note {seed}-{done}")
            latencies.append(time.perf_counter() - started)
            done += 1
        return done

    started = time.perf_counter()
    done = await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    return {"seconds": time.perf_counter() - started, "latencies": latencies, "commands": sum(done), "conflicts": 0}


def _passivate(client: FleetClient, story_id: str) -> None:
    handle = ray.get_actor(story_actor_name(story_id), namespace=client.settings.ray_namespace)
    with contextlib.suppress(ray.exceptions.RayActorError):
        ray.get(handle.passivate.remote())


# --- the run ------------------------------------------------------------------------------------


def _by_round(ours: list[float], theirs: list[float]) -> str:
    """min / median / max over the rounds of ours / theirs."""
    ratios = sorted(o / t for o, t in zip(ours, theirs, strict=True))
    return " / ".join(f"{r:.2f}" for r in (ratios[0], statistics.median(ratios), ratios[-1]))


def _ratio(value: float) -> str:
    """Three significant digits (a cold start can be thousands of times slower)."""
    return f"{value:.3g}"


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


async def _timed_async(call: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await call
    return time.perf_counter() - started


@contextlib.contextmanager
def _peers(ctx: BenchContext, tag: str) -> Iterator[tuple[list[Peer], type, dict[str, Any]]]:
    story_class, app_class = _peer_classes(ctx.settings.snapshot_every)
    sqlite, figures = sqlite_peer(app_class, Path(tempfile.mkdtemp(prefix="peer-", dir=ctx.data_dir)))
    peers = [sqlite]
    dsn = os.environ.get("BENCH_POSTGRES_DSN", "")  # (or --postgres-dsn)
    if dsn:
        postgres, pg_figures = postgres_peer(app_class, dsn, tag)
        peers.append(postgres)
        figures.update(pg_figures)
    try:
        yield peers, story_class, figures
    finally:
        for peer in peers:
            peer.cleanup()


def run(ctx: BenchContext) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    with _peers(ctx, tag) as (peers, story_class, figures):
        figures.update({"stories": STORIES, "writers": WRITERS, "rounds": ROUNDS, "round_seconds": ROUND_SECONDS})
        figures["load_average_before"] = " ".join(f"{load:.1f}" for load in os.getloadavg())
        figures.update(asyncio.run(_measure(ctx, tag, peers, story_class)))
        figures["load_average_after"] = " ".join(f"{load:.1f}" for load in os.getloadavg())
    return figures


async def _measure(ctx: BenchContext, tag: str, peers: list[Peer], story_class: type) -> dict[str, Any]:
    client = FleetClient(ctx.settings)
    stories = [f"peer-{tag}-{n}" for n in range(STORIES)]
    hot, big = f"peer-{tag}-hot", f"peer-{tag}-big"
    for wave in range(0, STORIES + 1, WRITERS):  # as WRITERS clients would, not 51 worker starts at once
        await asyncio.gather(
            *(client.aio.create_story(s, "benchmark story") for s in [*stories, hot][wave : wave + WRITERS])
        )
    apps = {peer.name: await asyncio.to_thread(peer.open) for peer in peers}
    for app in apps.values():
        for story_id in [*stories, hot]:
            app.save(story_class(story_id, "benchmark story"))
    time.sleep(5)  # worker start-up settles (as in the commands benchmark)
    ours_cpu_roots = (os.getpid(),)
    figures: dict[str, Any] = {}

    # Commands: 50 stories, then one contended story (the peer also with one lock per story).
    workloads = {
        "commands_50": (stories, [(p, None) for p in peers]),
        "commands_contended": (
            [hot],
            [(p, None) for p in peers] + [(p, {peer_id(hot): threading.Lock()}) for p in peers],
        ),
    }
    for workload, (ids, variants) in workloads.items():
        sides: dict[str, list[dict[str, Any]]] = {"ours": []}
        peer_ids = [peer_id(s) for s in ids]
        for peer, locks in variants:
            sides[_side(peer, locks)] = []
        await _our_round(client, ids, 1.0)  # warm-up
        for peer, locks in variants:
            await asyncio.to_thread(_peer_round, apps[peer.name], peer_ids, locks, 1.0)
        for _ in range(ROUNDS):
            before = tree_cpu_seconds(ours_cpu_roots)
            result = await _our_round(client, ids)
            result["cpu"] = tree_cpu_seconds(ours_cpu_roots) - before
            sides["ours"].append(result)
            for peer, locks in variants:
                before = peer.cpu_seconds()
                result = await asyncio.to_thread(_peer_round, apps[peer.name], peer_ids, locks)
                result["cpu"] = peer.cpu_seconds() - before
                sides[_side(peer, locks)].append(result)
        figures.update(_command_figures(workload, sides))

    # A 10,000-event story on each side whose state grows with its events (each one a milestone, kept
    # in the state): created, batches of 100 milestones, then TAIL single ones (after the last snapshot).
    batches = [BATCH] * ((EVENTS - 1 - TAIL) // BATCH) + [(EVENTS - 1 - TAIL) % BATCH]
    batches = [b for b in batches if b] + [1] * TAIL
    started = time.perf_counter()
    await client.aio.create_story(big, "big story")
    for n, size in enumerate(batches):
        milestones = [RecordMilestone("progress", f"milestone {n}-{i}") for i in range(size)]
        await client.aio.apply_changes(big, milestones)
    figures["fill_ours_s"] = round(time.perf_counter() - started, 1)
    for peer in peers:
        app = apps[peer.name]
        started = time.perf_counter()
        await asyncio.to_thread(_peer_fill, app, story_class, big, batches)
        figures[f"fill_{peer.name}_s"] = round(time.perf_counter() - started, 1)
    assert (await client.aio.get_story(big)).version == EVENTS
    figures["big_story_events"] = EVENTS

    # Reads, taking turns: history, live state, state when not in memory (with snapshots).
    big_id = peer_id(big)
    for peer in peers:
        assert apps[peer.name].repository.get(big_id).version == EVENTS  # in the cache from here on
    reads: dict[str, dict[str, list[float]]] = {k: {"ours": []} for k in ("history", "live_state", "cold_state")}
    for _ in range(REPEATS):
        reads["history"]["ours"].append(await _timed_async(client.aio.history(big)))
        reads["live_state"]["ours"].append(await _timed_async(client.aio.get_story(big)))
        for peer in peers:
            app = apps[peer.name]
            reads["history"].setdefault(peer.name, []).append(
                _timed(lambda app=app: list(app.repository.event_store.get(big_id)))
            )
            reads["live_state"].setdefault(peer.name, []).append(_timed(lambda app=app: app.repository.get(big_id)))
    for _ in range(REPEATS):
        _passivate(client, big)
        time.sleep(1.0)
        fresh = FleetClient(ctx.settings)  # a client without the passivated actor's handle
        reads["cold_state"]["ours"].append(await _timed_async(fresh.aio.get_story(big)))
        for peer in peers:
            app = await asyncio.to_thread(peer.open)  # an empty cache: the newest snapshot, then the tail
            reads["cold_state"].setdefault(peer.name, []).append(_timed(lambda app=app: app.repository.get(big_id)))
            app.close()
    for read, sides_times in reads.items():
        ours = statistics.median(sides_times["ours"])
        figures[f"{read}_ours_s"] = round(ours, 4)
        for name, times in sides_times.items():
            if name != "ours":
                figures[f"{read}_{name}_s"] = round(statistics.median(times), 4)
                figures[f"{read}_vs_{name}"] = _ratio(statistics.median(times) / ours)

    # Nothing to do: 50 + 2 live stories here; the peer has no process of its own (its server's, if local).
    await asyncio.gather(*(client.aio.get_story(s) for s in [*stories, hot, big]))  # all live
    figures["idle_live_stories"] = len(stories) + 2
    time.sleep(2.0)
    before_ours = tree_cpu_seconds(ours_cpu_roots, include_roots=False)
    before_peers = {p.name: tree_cpu_seconds(p.server_pids) for p in peers}
    time.sleep(IDLE_SECONDS)
    figures["idle_cores_ours"] = round(
        (tree_cpu_seconds(ours_cpu_roots, include_roots=False) - before_ours) / IDLE_SECONDS, 3
    )
    for peer in peers:
        figures[f"idle_cores_{peer.name}"] = round(
            (tree_cpu_seconds(peer.server_pids) - before_peers[peer.name]) / IDLE_SECONDS, 3
        )
    for app in apps.values():
        app.close()
    return figures


def _side(peer: Peer, locks: dict[UUID, threading.Lock] | None) -> str:
    return peer.name + ("_locked" if locks else "")


def _command_figures(workload: str, sides: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    rates = {}
    cpu_ms = {}
    for side, rounds in sides.items():
        commands = sum(r["commands"] for r in rounds)
        rates[side] = [r["commands"] / r["seconds"] for r in rounds]
        cpu_ms[side] = 1000 * sum(r["cpu"] for r in rounds) / max(commands, 1)
        figures[f"{workload}_{side}_per_s"] = round(commands / sum(r["seconds"] for r in rounds), 1)
        latency = latency_summary([s for r in rounds for s in r["latencies"]])
        figures[f"{workload}_{side}_p50_p99_ms"] = f"{latency['p50_ms']:.1f} / {latency['p99_ms']:.1f}"
        figures[f"{workload}_{side}_cpu_ms_per_command"] = round(cpu_ms[side], 2)
        if side != "ours":
            figures[f"{workload}_{side}_conflicts"] = sum(r["conflicts"] for r in rounds)
    for side in sides:
        if side == "ours":
            continue
        figures[f"{workload}_vs_{side}"] = _ratio(
            figures[f"{workload}_ours_per_s"] / figures[f"{workload}_{side}_per_s"]
        )
        figures[f"{workload}_vs_{side}_by_round"] = _by_round(rates["ours"], rates[side])
        figures[f"{workload}_cpu_vs_{side}"] = _ratio(cpu_ms[side] / cpu_ms["ours"])
    return figures
