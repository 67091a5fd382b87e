"""Terminal output of the CLI and the job entry points: records, tables and progress (rich), or JSON
with ``--json`` (``JSON_OUTPUT``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

#: set from --json: tables and records are printed as JSON
JSON_OUTPUT = False


def print_record(record: dict[str, Any]) -> None:
    """One record: ``key  value`` lines, or a JSON object with --json."""
    if JSON_OUTPUT:
        print(json.dumps(record, default=str, indent=2))
        return
    width = max((len(k) for k in record), default=0)
    for key, value in record.items():
        print(f"{key.ljust(width)}  {value}")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rows under upper-case column headers (rich's table, plain text when not on a terminal, never
    wrapped or cut), or a JSON list of the rows (every field) with --json."""
    if JSON_OUTPUT:
        print(json.dumps(list(rows), default=str, indent=2))
        return
    if not rows:
        print("(none)")
        return
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold", show_edge=False)
    for column in columns:
        table.add_column(column.upper(), no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*(escape(str(row.get(c, ""))) for c in columns))
    console = Console(highlight=False, width=None if os.isatty(1) else 100_000)  # never wrapped off a terminal
    with console.capture() as captured:
        console.print(table)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))


class ProgressLine:
    """The one progress display of the CLI: on a terminal rich's progress bar (done/total, rate, ETA);
    elsewhere (logs, CI) a line ``done/total unit  rate/s  ETA`` every few seconds. Call it with
    ``(done, total[, seconds])``; ``end()`` closes it."""

    def __init__(self, unit: str, *, every: float = 5.0) -> None:
        import sys
        import time

        self.unit, self.every = unit, every
        self._stream = sys.stderr
        self._tty = self._stream.isatty()
        self._clock = time.monotonic
        self._started = self._clock()
        self._last = float("-inf")
        self._drawn = False
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, done: int, total: int, seconds: float | None = None) -> None:
        now = self._clock()
        if self._tty:
            if self._bar is None:
                self._bar = Progress(
                    TextColumn(f"  {{task.completed:,.0f}}/{{task.total:,.0f}} {self.unit}"),
                    BarColumn(),
                    TaskProgressColumn(),
                    TimeRemainingColumn(),
                    console=Console(file=self._stream),
                    transient=False,
                )
                self._bar.start()
                self._task = self._bar.add_task(self.unit, total=total)
            assert self._task is not None
            self._bar.update(self._task, completed=done, total=total)
            self._drawn = True
            return
        if now - self._last < self.every and done < total:
            return
        self._last = now
        elapsed = seconds if seconds is not None else now - self._started
        rate = done / elapsed if elapsed else 0.0
        eta = f"  ETA {(total - done) / rate:,.0f} s" if rate and total > done else ""
        print(f"  {done:,}/{total:,} {self.unit}  {rate:,.0f}/s{eta}", file=self._stream, flush=True)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self._drawn = False
