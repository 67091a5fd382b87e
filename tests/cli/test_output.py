"""The CLI's one table/record/progress output (fleet_actors/console.py, through cli/common.py)."""

from __future__ import annotations

import json

from fleet_actors import console
from fleet_actors.cli import common


def test_progress_line_off_a_terminal_prints_first_every_few_seconds_and_last(capsys, monkeypatch) -> None:
    clock = iter([0.0, 1.0, 2.0, 6.0, 7.0])
    progress = common.ProgressLine("events", every=5.0)
    monkeypatch.setattr(progress, "_clock", lambda: next(clock))
    for done in (10, 20, 30, 40, 50):
        progress(done, 50, done / 10)
    progress.end()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[0] for line in lines] == ["10/50", "40/50", "50/50"]
    assert "ETA" in lines[0] and "ETA" not in lines[-1]


def test_tables_and_records_as_json(capsys, monkeypatch) -> None:
    monkeypatch.setattr(console, "JSON_OUTPUT", True)
    common.print_table([{"a": 1, "b": "x"}], ["a"])
    common.print_record({"job": "j", "state": "done"})
    out = capsys.readouterr().out
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(out)
    second, _ = decoder.raw_decode(out[end:].lstrip())
    assert first == [{"a": 1, "b": "x"}] and second == {"job": "j", "state": "done"}
