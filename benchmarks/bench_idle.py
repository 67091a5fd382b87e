"""The idle cost of a `dev up` stack: CPU of every process of the stack over a quiet window, with live
story actors, next to the command latency before and after that window.

It starts `fleet-actors dev up` in a folder of its own (the stack a developer runs: NATS, Valkey,
ArcadeDB, a Ray head with its dashboard, the projector pool and the gRPC gateway) and reads the CPU
times of every process under `dev up` from /proc over ``BENCH_IDLE_SECONDS``, first of the stack
alone, then after activating ``BENCH_IDLE_STORIES`` stories from a short-lived driver (a child
process, which exits: the story actors are detached and stay live) and letting it settle, and a third
time once those stories have passivated for being idle (``BENCH_IDLE_PASSIVATE_SECONDS``, given to the
drivers as FLEET_ACTOR_IDLE_SECONDS: 90 s, shorter than the default 120 s so that the run stays short).
Target: under 0.1 cores in total. A second driver then reads and sends commands to the same stories:
the first read of each re-activates it (on a spare worker when one is ready), and the commands' p50
and p99 against those before the idle time show what resting cost the next command.

Run alone: ``python -m benchmarks.bench_idle`` (it needs no harness stack); in the suite:
``python -m benchmarks idle``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.harness import percentile

STORIES = int(os.environ.get("BENCH_IDLE_STORIES", "50"))
SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "30"))
SETTLE = float(os.environ.get("BENCH_IDLE_SETTLE", "15"))
#: commands per story in each latency round (sequential, one story after the other)
COMMANDS = int(os.environ.get("BENCH_IDLE_COMMANDS", "4"))
#: idle seconds after which the drivers' story actors passivate (FLEET_ACTOR_IDLE_SECONDS); longer
#: than SETTLE + SECONDS, so that the live window has every story live
PASSIVATE = float(os.environ.get("BENCH_IDLE_PASSIVATE_SECONDS", "90"))
STORY_ACTOR = "ray::StoryActor"
TARGET_CORES = 0.1
TICKS = os.sysconf("SC_CLK_TCK")


def _dev_up(data_dir: Path, timeout: float = 300) -> subprocess.Popen[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "fleet_actors.cli.main", "dev", "up", "--data-dir", str(data_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip() == "ready":
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError("dev up did not become ready")
    return process


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children[int(stat[stat.rindex(")") + 2 :].split()[1])].append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _label(pid: int) -> str:
    """What a process is: Ray's worker titles (ray::StoryActor), else the program and its role."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].split()[0]
    if words[0].startswith("ray-dashboard-"):  # the dashboard head's module processes (JobHead, StateHead...)
        return "ray dashboard module"
    program = Path(words[0]).name
    if program == "java":
        return "arcadedb (java)"
    if program.startswith("python"):
        if len(words) > 2 and words[1:3] == ["-B", "-c"]:
            return "python multiprocessing (dashboard's forkserver, resource tracker)"
        for word in words[1:]:
            if word.endswith(".py"):
                return f"python {Path(word).name}"
            if word in ("gateway", "up", "start"):
                return f"python ({word})"
        return "python"
    if program == "ray":
        return "ray start"
    return program


def _measure_cpu(root: int, seconds: float) -> dict[str, tuple[int, float]]:
    """Cores used per kind of process (count, cores) over ``seconds``."""
    before = {pid: (t, _label(pid)) for pid in _descendants(root) if (t := _cpu_ticks(pid)) is not None}
    time.sleep(seconds)
    used: dict[str, list[float]] = defaultdict(list)
    for pid, (start, label) in before.items():
        end = _cpu_ticks(pid)
        if end is not None:
            used[label].append((end - start) / TICKS / seconds)
    return {label: (len(cores), sum(cores)) for label, cores in sorted(used.items(), key=lambda kv: -sum(kv[1]))}


def _drive(env_file: Path, prefix: str, create: bool) -> dict[str, Any]:
    """A driver in a child process (it joins the stack's Ray cluster and leaves): command latencies."""
    out = env_file.parent / f"idle-drive-{prefix}-{int(create)}.json"
    from fleet_actors.settings import load_env_file

    env = {
        **os.environ,
        **load_env_file(env_file),
        "RAY_USAGE_STATS_ENABLED": "0",
        "FLEET_ACTOR_IDLE_SECONDS": str(PASSIVATE),
    }
    subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_idle", "--drive", str(out), prefix, str(int(create))],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    return dict(json.loads(out.read_text()))


def _driver_main(out: str, prefix: str, create: bool) -> None:
    from fleet_actors import FleetClient
    from fleet_actors.settings import Settings

    client = FleetClient.connect(settings=Settings.from_env(), start_local=False)
    stories = [f"{prefix}-{n}" for n in range(STORIES)]
    if create:
        for story_id in stories:
            client.create_story(story_id, "idle benchmark story")
    first = []
    if not create:  # the first call to each idle story: a read, which includes this driver's handle lookup
        for story_id in stories:
            started = time.perf_counter()
            client.get_story(story_id)
            first.append(time.perf_counter() - started)
    latencies = []
    for i in range(COMMANDS):
        for story_id in stories:
            started = time.perf_counter()
            client.record_summary(story_id, f"note {i}")
            latencies.append(time.perf_counter() - started)
    Path(out).write_text(json.dumps({"latencies": latencies, "first": first}))


def _count(root: int, label: str) -> int:
    return sum(1 for pid in _descendants(root) if _label(pid) == label)


def _wait_for_passivation(root: int, timeout: float) -> float:
    """Seconds until no story actor process is left under ``root`` (``timeout`` if some are)."""
    started = time.monotonic()
    while _count(root, STORY_ACTOR) and time.monotonic() - started < timeout:
        time.sleep(1.0)
    return time.monotonic() - started


def _p50_ms(latencies: list[float]) -> float:
    return round(statistics.median(latencies) * 1000, 2)


def measure(data_dir: Path) -> dict[str, Any]:
    stack = _dev_up(data_dir)
    try:
        env_file = data_dir / "fleet.env"
        time.sleep(SETTLE)
        bare = _measure_cpu(stack.pid, SECONDS)  # the stack alone: projectors, gateway, no story actor
        before = _drive(env_file, "idle", create=True)["latencies"]
        time.sleep(SETTLE)
        per_process = _measure_cpu(stack.pid, SECONDS)
        waited = _wait_for_passivation(stack.pid, PASSIVATE + 120)
        left = _count(stack.pid, STORY_ACTOR)
        time.sleep(SETTLE / 3)
        passivated = _measure_cpu(stack.pid, SECONDS)
        drive = _drive(env_file, "idle", create=False)
        after, first = drive["latencies"], drive["first"]
    finally:
        _stop(stack)
    total = sum(cores for _, cores in per_process.values())
    figures: dict[str, Any] = {
        "live_stories": STORIES,
        "window_s": SECONDS,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    for label, (count, cores) in per_process.items():
        figures[f"cores {label} (x{count})"] = round(cores, 4)
    for label, (count, cores) in passivated.items():
        figures[f"passivated: cores {label} (x{count})"] = round(cores, 4)
    figures.update(
        {
            "idle_total_cores": round(total, 3),
            "idle_total_cores_before_any_story": round(sum(cores for _, cores in bare.values()), 3),
            "passivate_after_idle_s": PASSIVATE,
            "waited_for_passivation_s": round(waited, 1),
            "story_actors_left_after_wait": left,
            "idle_total_cores_after_passivation": round(sum(cores for _, cores in passivated.values()), 3),
            "spare_workers_after_passivation": passivated.get("ray::IDLE", (0, 0.0))[0],
            "cores_spare_workers_after_passivation": round(passivated.get("ray::IDLE", (0, 0.0))[1], 4),
            "target_cores": TARGET_CORES,
            "command_p50_ms_before_idle": _p50_ms(before),
            "command_p50_ms_after_idle": _p50_ms(after),
            "first_read_per_story_after_idle_p50_ms": _p50_ms(first),
            "first_read_per_story_after_idle_p99_ms": round(percentile(first, 99) * 1000, 2),
            "command_p99_ms_before_idle": round(percentile(before, 99) * 1000, 2),
            "command_p99_ms_after_idle": round(percentile(after, 99) * 1000, 2),
            "after_to_before_p50": round(statistics.median(after) / statistics.median(before), 3),
        }
    )
    return figures


def run(ctx: Any) -> dict[str, Any]:
    return measure(Path(tempfile.mkdtemp(prefix="idle-", dir=ctx.data_dir)))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        _driver_main(sys.argv[2], sys.argv[3], sys.argv[4] == "1")
        return
    from benchmarks.harness import print_table

    data_dir = Path(tempfile.mkdtemp(prefix="fleet-idle-"))
    try:
        print_table("idle", measure(data_dir))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
