"""The compiled decoder reads bytes from the log, which whoever can write to the log controls: built
with AddressSanitizer and UBSan, it decodes tens of thousands of damaged events and snapshots with
no out-of-bounds read, use after free or undefined behaviour (a sanitizer stops the process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SOURCE = ROOT / "fleet_actors" / "codec" / "_wire.c"


def _runtime(name: str) -> str | None:
    compiler = shutil.which("gcc")
    if compiler is None:
        return None
    path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.skipif(
    _runtime("libasan.so") is None or _runtime("libubsan.so") is None, reason="needs gcc with ASan and UBSan"
)
def test_damaged_input_never_makes_the_decoder_touch_memory_it_does_not_own(tmp_path):
    built = tmp_path / "_wire_sanitized.so"
    subprocess.run(
        [
            "gcc", "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-fPIC", "-shared", f"-I{sysconfig.get_paths()['include']}",
            str(SOURCE), "-o", str(built),
        ],
        check=True,
    )  # fmt: skip
    environment = {
        **os.environ,
        "LD_PRELOAD": f"{_runtime('libasan.so')} {_runtime('libubsan.so')}",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",  # CPython's own allocations are not ours to judge
        "PYTHONPATH": str(ROOT),
    }
    run = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("wire_fuzz.py")), str(built), "7", "30000"],
        env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert "no memory error" in run.stdout
