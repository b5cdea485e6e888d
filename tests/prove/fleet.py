"""The run's real processes: `pixelgate-server`s and a `redis-server`, always stopped.

The processes themselves are tests/processes.py's (shared with the tests); here each
server gets its config file, its audit file and the counters the scenarios read.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import processes
from processes import RedisServer, signal_group, write_config

START_TIMEOUT_S = 180.0
"""Importing torch and diffusers and loading the tiny model: 10-15 s alone, far more
when five servers start at once on a small shared CPU box."""


class ServerProcess(processes.ServerProcess):
    """A server of the fleet: its config (`settings` with its own audit file) written to
    `directory`, its stdout, stderr and audit there under `name`."""

    def __init__(self, name: str, settings: dict[str, Any], directory: Path) -> None:
        self.audit_path = directory / f"{name}.audit.jsonl"
        config = write_config(
            directory / f"{name}.toml",
            {**settings, "audit": {"destination": str(self.audit_path)}},
        )
        super().__init__(config, directory, name)
        self.start_error: str | None = None

    def started(self, timeout: float = START_TIMEOUT_S) -> bool:
        """Waits for the start-up line; False (with `start_error` set) if it never comes."""
        try:
            self.wait_serving(timeout)
        except AssertionError as error:
            self.start_error = str(error).partition("\n")[0]
            return False
        return True

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


class Fleet:
    """Everything this run started; close() stops all of it, whatever state it is in."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: dict[str, ServerProcess] = {}
        self.redis: RedisServer | None = None
        self._lock = threading.Lock()

    def start_redis(self) -> RedisServer:
        """Starts the shared Redis."""
        self.redis = RedisServer(self.directory)
        return self.redis

    def start_servers(self, configs: dict[str, dict[str, Any]]) -> float:
        """Starts the servers at once and waits for each; returns the seconds it took."""
        started = time.monotonic()
        with self._lock:
            for name, settings in configs.items():
                self.servers[name] = ServerProcess(name, settings, self.directory)
        waiters = [
            threading.Thread(target=server.started, daemon=True) for server in self.servers.values()
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
        running = [server.process for server in self.servers.values()]
        if self.redis is not None and self.redis.process is not None:
            running.append(self.redis.process)
        for process in running:
            if process.poll() is None:
                signal_group(process, signal.SIGKILL)


__all__ = ["Fleet", "ServerProcess"]
