"""Real processes on 127.0.0.1: `pixelgate-server`s and a `redis-server`, always stopped.

Each process runs in a session (process group) of its own, so stopping it stops
whatever it started; its stdout and stderr go to files the log scan reads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SERVING = re.compile(r"^pixelgate: serving on port (\d+)$", re.MULTILINE)
START_TIMEOUT_S = 180.0
"""Importing torch and diffusers and loading the tiny model: 10-15 s alone, far more
when five servers start at once on a small shared CPU box."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(settings: dict[str, Any], prefix: str = "") -> str:
    """Renders nested settings as TOML: dicts are tables, lists of dicts arrays of tables."""
    lines = [
        f"{key} = {_toml_value(value)}"
        for key, value in settings.items()
        if not isinstance(value, dict) and not _is_table_list(value)
    ]
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            lines += ["", f"[{name}]", to_toml(value, f"{name}.").rstrip("\n")]
        elif _is_table_list(value):
            for item in value:
                lines += ["", f"[[{name}]]", to_toml(item, f"{name}.").rstrip("\n")]
    return "\n".join(line for i, line in enumerate(lines) if line or i) + "\n"


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and isinstance(value[0], dict)


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    # One intra-op thread: torch's default thread team spins at every barrier when
    # other processes hold the cores, and a step can slow twenty-fold.
    env["OMP_NUM_THREADS"] = "1"
    return env


def _stop_group(process: subprocess.Popen[bytes], grace: float) -> int | None:
    """SIGTERM to the process group, SIGKILL after `grace`; the exit code (None: unknown)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)
    return process.returncode


class ServerProcess:
    """A `python -m pixelgate.server --config FILE` child, its log and audit files."""

    def __init__(self, name: str, settings: dict[str, Any], directory: Path) -> None:
        self.name = name
        self.audit_path = directory / f"{name}.audit.jsonl"
        self.stdout_path = directory / f"{name}.stdout.log"
        self.stderr_path = directory / f"{name}.stderr.log"
        self.config_path = directory / f"{name}.toml"
        settings = {**settings, "audit": {"destination": str(self.audit_path)}}
        self.config_path.write_text(to_toml(settings), encoding="utf-8")
        self.port: int | None = None
        self.exit_code: int | None = None
        self.start_error: str | None = None
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pixelgate.server", "--config", str(self.config_path)],
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=_child_env(),
                start_new_session=True,
            )

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> bool:
        """Waits for the start-up line; False (with `start_error` set) if it never comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = SERVING.search(self.stdout())
            if match:
                self.port = int(match.group(1))
                return True
            if not self.alive():
                last = (self.stderr().strip().splitlines() or ["(no output)"])[-1]
                self.start_error = f"exited {self.process.returncode}: {last[:200]}"
                return False
            time.sleep(0.1)
        self.start_error = f"not serving within {timeout:.0f} s"
        return False

    def stdout(self) -> str:
        """Everything the server printed to stdout so far."""
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        """The server's log so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def audit_entries(self) -> list[dict[str, Any]]:
        """The complete audit lines written so far (a batch may be half written)."""
        if not self.audit_path.exists():
            return []
        text = self.audit_path.read_text(encoding="utf-8", errors="replace")
        whole = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in whole.splitlines() if line.strip()]

    def wait_audit(
        self,
        count: int,
        timeout: float = 5.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """The audit lines once at least `count` of them (those `where` picks) are written,
        or when `timeout` passes: a call's line follows its end by a batch interval."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.audit_entries()
            picked = [e for e in entries if where(e)] if where else entries
            if len(picked) >= count or time.monotonic() > deadline:
                return picked
            time.sleep(0.05)

    def resources(self) -> tuple[int, int]:
        """(open file descriptors, threads) of the server process, from /proc."""
        proc = Path(f"/proc/{self.pid}")
        return len(os.listdir(proc / "fd")), len(os.listdir(proc / "task"))

    def signal(self, signum: int) -> None:
        """Sends `signum` to the server process alone."""
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the process ends within `timeout`, else None."""
        try:
            self.exit_code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.exit_code

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace`; records and returns the exit code."""
        code = _stop_group(self.process, grace)
        if self.exit_code is None:
            self.exit_code = code
        return code


class RedisProcess:
    """Debian's `redis-server` on a fixed free port, which survives a kill and restart."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self._binary = binary
        self._directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Starts the server (again) on its port, empty, and waits until it answers."""
        self.process = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def ping(self) -> bool:
        """True when the server answers."""
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: gone at once, its data with it."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after freeze()."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stops the server if it runs (a frozen one too)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            _stop_group(self.process, 5)


class Fleet:
    """Everything this run started; close() stops all of it, whatever state it is in."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: dict[str, ServerProcess] = {}
        self.redis: RedisProcess | None = None
        self._lock = threading.Lock()

    def start_redis(self) -> RedisProcess:
        """Starts the shared Redis."""
        self.redis = RedisProcess(self.directory)
        return self.redis

    def start_servers(self, configs: dict[str, dict[str, Any]]) -> float:
        """Starts the servers at once and waits for each; returns the seconds it took."""
        started = time.monotonic()
        with self._lock:
            for name, settings in configs.items():
                self.servers[name] = ServerProcess(name, settings, self.directory)
        waiters = [
            threading.Thread(target=server.wait_serving, daemon=True)
            for server in self.servers.values()
        ]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join(START_TIMEOUT_S + 5)
        return time.monotonic() - started

    def close(self, grace: float = 15.0) -> None:
        """Stops every server (SIGTERM, then SIGKILL) and Redis; exit codes stay on each."""
        with self._lock:
            servers = list(self.servers.values())
        stoppers = [threading.Thread(target=server.stop, args=(grace,)) for server in servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        if self.redis is not None:
            self.redis.stop()

    def kill_all(self) -> None:
        """SIGKILL to every process group at once: the watchdog's last resort."""
        processes = [server.process for server in self.servers.values()]
        if self.redis is not None and self.redis.process is not None:
            processes.append(self.redis.process)
        for process in processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


__all__ = ["Fleet", "RedisProcess", "ServerProcess", "free_port", "to_toml"]
