"""Real child processes on 127.0.0.1: `pixelgate-server`s from a TOML config, and `redis-server`.

Shared by the tests and the proof suite (tests/prove), so it imports nothing of the
server (support.py does, and with it torch): the proof runner stays light.

Each process runs in a session (process group) of its own, so stopping it stops
whatever it started, and a terminal's Ctrl-C reaches only the runner, which stops it.
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.pki import DevPkiFiles

SERVING = r"^pixelgate: serving on port (\d+)$"
"""The line a server prints to stdout once it serves."""


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, section by section (nested dicts merge too)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def server_settings(pki: DevPkiFiles, **overrides: Any) -> dict[str, Any]:
    """A test server's settings as a config file holds them: loopback, port 0, the test
    PKI, the development issuer. Overrides merge into sections."""
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "tls": {
            "cert_file": pki.server_cert,
            "key_file": pki.server_key,
            "client_ca_file": pki.ca_cert,
        },
        "auth": {
            "issuers": [
                {
                    "issuer": DEV_ISSUER,
                    "audiences": [DEV_AUDIENCE],
                    "public_key_files": [pki.verification_key],
                }
            ]
        },
        # Off: the default port is fixed and test servers run side by side. A test that
        # scrapes turns it on at "127.0.0.1:0" (RunningServer.metrics_port says where).
        "metrics": {"enabled": False},
    }
    return merge(base, overrides)


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


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and isinstance(value[0], dict)


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


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """Writes `settings` to `path` as a TOML config file; returns `path`."""
    path.write_text(to_toml(settings), encoding="utf-8")
    return path


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_env() -> dict[str, str]:
    """The environment of a server child: no PIXELGATE_ settings, unbuffered, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    # One intra-op thread: torch's default thread team spins at every barrier when
    # other processes hold the cores, and a step can slow twenty-fold.
    env["OMP_NUM_THREADS"] = "1"
    return env


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Sends `signum` to the process group `process` leads, if it is still there."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def stop_group(process: subprocess.Popen[bytes], grace: float) -> int | None:
    """SIGTERM to the process group, SIGKILL after `grace`; the exit code (None: unknown)."""
    if process.poll() is None:
        signal_group(process, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        signal_group(process, signal.SIGKILL)
        process.wait(10)
    return process.returncode


class ServerProcess:
    """A `python -m pixelgate.server --config FILE` child, its stdout and stderr in files."""

    def __init__(self, config: Path, directory: Path, name: str = "server") -> None:
        self.name = name
        self.config_path = config
        self.stdout_path = directory / f"{name}.stdout.log"
        self.stderr_path = directory / f"{name}.stderr.log"
        self.port: int | None = None
        self.exit_code: int | None = None
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pixelgate.server", "--config", str(config)],
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=child_env(),
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

    def stdout(self) -> str:
        """Everything the server printed to stdout so far."""
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        """The server's log so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, read: Callable[[], str], pattern: str, timeout: float) -> re.Match[str]:
        """Polls an output (`self.stdout` or `self.stderr`) until `pattern` shows up.

        AssertionError if the process exits first or `timeout` passes: its first line
        says why (with the last line of stderr), the rest is the end of stderr.
        """
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, read(), re.MULTILINE)):
            if not self.alive() or time.monotonic() > deadline:
                stderr = self.stderr().strip()
                last = (stderr.splitlines() or ["(no output)"])[-1][:200]
                why = (
                    f"exited {self.process.returncode}"
                    if not self.alive()
                    else f"no {pattern!r} within {timeout:.0f} s"
                )
                raise AssertionError(f"{why}: {last}\n{stderr[-4000:]}")
            time.sleep(0.05)
        return match

    def wait_serving(self, timeout: float) -> int:
        """The port, once the start-up line shows (AssertionError as for wait_for)."""
        self.port = int(self.wait_for(self.stdout, SERVING, timeout).group(1))
        return self.port

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
        code = stop_group(self.process, grace)
        if self.exit_code is None:
            self.exit_code = code
        return code


class RedisServer:
    """Debian's `redis-server` on a fixed free port, in a scratch directory; it keeps
    its port across stop (or kill) and start, and starts empty each time."""

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
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self._directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def ping(self) -> bool:
        """True when the server answers."""
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def flush(self) -> None:
        """Empties the database (between tests)."""
        import redis

        redis.Redis.from_url(self.url).flushall()

    def kill(self) -> None:
        """SIGKILL: gone at once, its data with it."""
        assert self.process is not None
        signal_group(self.process, signal.SIGKILL)
        self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers."""
        assert self.process is not None
        signal_group(self.process, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after freeze()."""
        assert self.process is not None
        signal_group(self.process, signal.SIGCONT)

    def stop(self) -> None:
        """Stops the server if it runs (a frozen one too)."""
        if self.process is not None and self.process.poll() is None:
            signal_group(self.process, signal.SIGCONT)
            stop_group(self.process, 5)
