"""The project's own services on a local stack: the projector pool and the gRPC gateway.

They run as child processes of `dev up` (each joins the stack's Ray cluster as a driver), so the
launcher itself never imports Ray, whose init installs signal handlers of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from fleet_actors.errors import BackendUnavailable
from fleet_actors.settings import Settings

CLI = [sys.executable, "-m", "fleet_actors.cli.main"]


def _environment(stack_env: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, **stack_env, "RAY_USAGE_STATS_ENABLED": "0"}


def start_projector_pool(stack_env: Mapping[str, str], timeout: float = 180) -> None:
    """Create the detached projector actors on the stack's cluster (returns once they consume)."""
    done = subprocess.run(
        [*CLI, "projections", "start"], env=_environment(stack_env), capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise BackendUnavailable(f"the projectors did not start: {done.stderr.strip()[-800:]}")


class GatewayProcess:
    """`fleet-actors gateway` as a child process; ``address`` once it printed ``ready`` and answered a
    health check (over TLS when the stack's settings ask for it)."""

    def __init__(
        self, stack_env: Mapping[str, str], address: str = "127.0.0.1:0", *, log_file: Path | None = None
    ) -> None:
        self._env = _environment(stack_env)
        self._bind = address
        #: where the gateway's log goes (appended); None: where dev up's goes
        self.log_file = log_file
        self._process: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self, timeout: float = 120) -> GatewayProcess:
        log: IO[str] | None = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_file, "a")  # noqa: SIM115 - the child holds it; ours closes below
        try:
            self._process = subprocess.Popen(
                [*CLI, "gateway", "--address", self._bind],
                env=self._env,
                stdout=subprocess.PIPE,
                stderr=log,  # None: the gateway's log goes where dev up's goes
                text=True,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        found = threading.Event()

        def read_stdout() -> None:
            assert self._process is not None and self._process.stdout is not None
            for line in self._process.stdout:
                if line.startswith("FLEET_GATEWAY_ADDRESS="):
                    self.address = line.strip().split("=", 1)[1]
                elif line.strip() == "ready":
                    found.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BackendUnavailable(f"the gRPC gateway did not start; see {self.log_file or 'its log above'}")
        try:
            self._check_health()
        except BaseException:
            self.stop()
            raise
        return self

    def _check_health(self, timeout: float = 10) -> None:
        from fleet_actors.tls import gateway_health

        gateway_health(Settings.from_env(self._env), self.address, timeout=timeout)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self, grace: float = 15) -> None:
        """SIGTERM (the gateway drains in-flight calls), then SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
