"""``python -m benchmarks [NAME ...]``: see benchmarks/README.md."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks.harness import run_benchmarks

ALL = [
    "durability",
    "commands",
    "projection",
    "activation",
    "gateway",
    "storage",
    "archive",
    "rebuild",
    "graph_blue_green",
    "reads",
    "idle",
]
#: run by name only: needs the ``bench`` extra (the peer library)
EXTRA = ["peer"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument(
        "names", nargs="*", default=ALL, help=f"benchmarks to run (default: {' '.join(ALL)}; also: {' '.join(EXTRA)})"
    )
    parser.add_argument("--sync", default="always", help="nats-server sync_interval: always (default) or e.g. 2m")
    parser.add_argument("--out", type=Path, help="JSON results file (default: benchmarks/results/<time>.json)")
    parser.add_argument(
        "--postgres-dsn", help="peer: also run the peer on this PostgreSQL server (or BENCH_POSTGRES_DSN)"
    )
    args = parser.parse_args()
    if args.postgres_dsn:
        os.environ["BENCH_POSTGRES_DSN"] = args.postgres_dsn
    out = args.out or Path("benchmarks/results") / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    run_benchmarks(args.names, args.sync, out)


if __name__ == "__main__":
    main()
