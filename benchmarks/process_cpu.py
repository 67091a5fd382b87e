"""CPU time of this benchmark's process tree, by kind of process, from /proc (Linux).

The benchmark driver starts the servers and the local Ray runtime, so every process a run measures
descends from it: the driver, nats-server, valkey, ArcadeDB, gcs_server, raylet, Ray's agents and
the Ray workers (named by their process title, ``ray::StoryActor`` and the like). Processes of other
work on the machine are not counted.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")

#: a process's kind from its command line: the first of these substrings that its program (the
#: first word: a Ray worker's is its title) or, for the Python ones, its script contains
_KINDS = (
    ("ray::StoryActor", "story actors"),
    ("ray::StoryRegistry", "story registry"),
    ("ray::Floor", "floor actors"),
    ("ray::IDLE", "idle Ray workers"),
    ("ray::DashboardAgent", "Ray agents"),
    ("ray::RuntimeEnvAgent", "Ray agents"),
    ("ray::", "other Ray actors"),
    ("default_worker.py", "idle Ray workers"),  # a worker still starting (no process title yet)
    ("gcs_server", "gcs_server"),
    ("/raylet", "raylet"),
    ("nats-server", "nats-server"),
    ("valkey", "valkey"),
    ("java", "ArcadeDB"),
    ("dashboard", "Ray agents"),
    ("log_monitor", "Ray agents"),
    ("monitor.py", "Ray agents"),
)


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds in user and kernel mode) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def _kind(pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "other"
    program = " ".join(words[:2]) if "python" in words[0] else words[0]  # a script: python [-u] path
    program = " ".join(words[:3]) if len(words) > 1 and words[1] == "-u" else program
    return next((kind for needle, kind in _KINDS if needle in program), "other")


def tree_cpu(root: int | None = None) -> dict[int, tuple[str, float]]:
    """pid -> (kind, CPU seconds so far) of ``root`` (default: this process) and its descendants."""
    root = os.getpid() if root is None else root
    stats = {int(pid): s for pid in os.listdir("/proc") if pid.isdigit() and (s := _stat(pid)) is not None}
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _) in stats.items():
        children[parent].append(pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found[pid] = (_kind(pid, root), stats[pid][1])
            todo.extend(children[pid])
    return found


def cpu_by_kind(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two :func:`tree_cpu` readings, by kind (processes alive at both)."""
    spent: dict[str, float] = defaultdict(float)
    for pid, (kind, seconds) in after.items():
        if pid in before:
            spent[kind] += seconds - before[pid][1]
    return dict(spent)
