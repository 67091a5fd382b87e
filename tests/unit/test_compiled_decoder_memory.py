"""The compiled decoder reads bytes from the log, which whoever can write to the log controls, and the
frame scanner reads what the NATS connection brings: built with AddressSanitizer and UBSan, they
take tens of thousands of damaged events, snapshots and protocol buffers with no out-of-bounds
read, use after free or undefined behaviour (a sanitizer stops the process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BUILT = {  # the C source, its fuzzer (beside this file), damaged inputs fed
    "decoder": (ROOT / "fleet_actors" / "codec" / "_wire.c", "wire_fuzz.py", 30000),
    "frame scanner": (ROOT / "fleet_actors" / "adapters" / "jetstream" / "_frames.c", "frames_fuzz.py", 30000),
}


def _runtime(name: str) -> str | None:
    compiler = shutil.which("gcc")
    if compiler is None:
        return None
    path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.skipif(
    _runtime("libasan.so") is None or _runtime("libubsan.so") is None, reason="needs gcc with ASan and UBSan"
)
@pytest.mark.parametrize("part", BUILT)
def test_damaged_input_never_makes_compiled_code_touch_memory_it_does_not_own(tmp_path, part):
    source, fuzzer, count = BUILT[part]
    built = tmp_path / f"{source.stem}_sanitized.so"
    subprocess.run(
        [
            "gcc", "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-fPIC", "-shared", f"-I{sysconfig.get_paths()['include']}",
            str(source), "-o", str(built),
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
        [sys.executable, str(Path(__file__).with_name(fuzzer)), str(built), "7", str(count)],
        env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert "no memory error" in run.stdout
