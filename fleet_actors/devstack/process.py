"""Process plumbing shared by the embedded servers: ports, start, readiness, stop by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Self

from fleet_actors.errors import BackendUnavailable, ConfigurationError
from fleet_actors.urls import redact_url

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "pip install -e '.[dev]'"


_HANDED_OUT: set[int] = set()
_HANDING_OUT = threading.Lock()


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now and that this process
    has not handed out before: the kernel may offer a port again once its probe socket is closed,
    and a launcher picks several ports before any server binds them."""
    with _HANDING_OUT:
        while True:
            port = _unused_port()
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR, so a port held only by TIME_WAIT sockets of a
        # server we just stopped is usable; without the option it would look taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def find_executable(name: str) -> Path:
    """A console script of this environment, preferred over whatever else is on PATH.

    The venv's copy is the pinned one (Debian's nats-server, for one, is too old to use).
    """
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    found = shutil.which(name)
    if found is None:
        raise ConfigurationError(f"{name} not found next to {sys.executable} or on PATH; run {INSTALL_HINT}")
    return Path(found)


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`, read from /proc (Linux).

    Ray workers put themselves into their own process groups but stay in the session of
    the `ray start` process, so the session, not the group, is what covers all of them.
    """
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # the process exited while we were looking
            continue
        # fields after "(comm)": state ppid pgrp session ...; comm itself may contain spaces
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class ManagedServer(ABC):
    """One server process: started from a data directory, logged there, stopped by pid."""

    #: short name, used for the log file and in messages
    name: ClassVar[str]
    #: seconds between SIGTERM and SIGKILL in :meth:`stop`
    stop_grace: ClassVar[float] = 10.0
    default_timeout: ClassVar[float] = 60.0

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- what a concrete server provides ------------------------------------------------

    @property
    @abstractmethod
    def url(self) -> str: ...

    @abstractmethod
    def _command(self) -> list[str]: ...

    @abstractmethod
    def _probe(self) -> str | None:
        """One readiness check: None when ready, else why not (for the timeout message)."""

    def _prepare(self) -> None:
        """Runs before each start; overrides write their config files after calling this."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _environment(self) -> dict[str, str] | None:
        return None

    def _kill_all(self) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    def _cleanup(self) -> None:
        """Runs once the process has exited (stop, kill) or failed to start."""
        self._proc = None

    # -- life cycle ----------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """How the process ended if it exited by itself (crash, SIGKILL from outside); None while it
        runs, and after :meth:`stop` or :meth:`kill`."""
        proc = self._proc
        return None if proc is None else proc.poll()

    def start(self) -> Self:
        if self.running:
            raise ConfigurationError(f"{self.name} is already running (pid {self.pid})")
        self._prepare()
        try:
            command = self._command()
            with open(self.log_path, "ab") as log:
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
                log.flush()
                self._log_offset = log.tell()
                # A session of its own: a Ctrl-C in the terminal reaches only the launcher,
                # which then stops the servers itself instead of them dying half-way.
                self._proc = subprocess.Popen(
                    command,
                    cwd=self.data_dir,
                    env=self._environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except BaseException:
            self._cleanup()
            raise
        return self

    def wait_ready(self, timeout: float | None = None) -> Self:
        timeout = self.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc is None:
                raise BackendUnavailable(f"{self.name} was stopped before it became ready")
            code = proc.poll()
            if code is not None:
                raise self._failure(f"exited with code {code} before it became ready")
            reason = self._probe()
            if reason is None:
                return self
            if time.monotonic() >= deadline:
                raise self._failure(f"not ready after {timeout:.0f} s (last check: {reason})")
            time.sleep(0.05)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is gone."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(self.stop_grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                self._kill_all()
                proc.wait()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL without any chance to flush: for failure tests."""
        if self._proc is None:
            return
        self._kill_all()
        self._proc.wait()
        self._cleanup()

    def restart(self, timeout: float | None = None) -> Self:
        """Stop and start again with the same data directory and port."""
        self.stop()
        return self.start().wait_ready(timeout)

    def log_tail(self, lines: int = 25) -> str:
        """The last lines this run wrote to its log."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _failure(self, what: str) -> BackendUnavailable:
        tail = self.log_tail()
        detail = f"\n--- last lines of {self.log_path} ---\n{tail}" if tail else f" (log {self.log_path} is empty)"
        return BackendUnavailable(f"{self.name} on port {self.port} {what}{detail}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={redact_url(self.url)!r}, pid={self.pid}, data_dir={str(self.data_dir)!r})"


def terminate_session(sid: int, timeout: float) -> None:
    """SIGKILL every process of session `sid` until none is left."""
    deadline = time.monotonic() + timeout
    while members := session_members(sid):
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            raise BackendUnavailable(f"processes {members} of session {sid} survived SIGKILL")
        time.sleep(0.05)
