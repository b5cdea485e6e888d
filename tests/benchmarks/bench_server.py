"""What the benchmarks share: a scratch PKI and config, a server process, a client.

Rate limits are lifted (the benchmarks measure speed, not policy); everything
else is the server as deployed, audit log included (written to a file).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pixelgate.client import PixelgateClient
from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.pki import DevPkiFiles, write_dev_pki
from pixelgate.dev.tokens import load_signing_key, mint_access_token

UNLIMITED = 1e12
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def write_config(directory: Path, extra: str = "") -> tuple[Path, DevPkiFiles]:
    """A dev PKI and a TOML config under `directory`; `extra` is appended to the TOML."""
    files = write_dev_pki(directory / "pki")
    config = directory / "bench.toml"
    config.write_text(
        f"""
host = "127.0.0.1"
port = 0
cache_dir = "{directory / "cache"}"
[tls]
cert_file = "{files.server_cert}"
key_file = "{files.server_key}"
client_ca_file = "{files.ca_cert}"
[rate_limit]
requests_per_minute = {UNLIMITED}
burst = {int(UNLIMITED)}
gpu_cost_per_minute = {UNLIMITED}
gpu_cost_burst = {UNLIMITED}
max_concurrent_generations = 1000
peer_requests_per_minute = {UNLIMITED}
peer_burst = {int(UNLIMITED)}
[metrics]
address = "127.0.0.1:0"  # on, as deployed; servers run side by side
[[auth.issuers]]
issuer = "{DEV_ISSUER}"
audiences = ["{DEV_AUDIENCE}"]
public_key_files = ["{files.verification_key}"]
{extra}
""",
        encoding="utf-8",
    )
    return config, files


def settings_environ(overrides: Mapping[str, str]) -> dict[str, str]:
    """`{"rate_limit.burst": "5"}` as the server reads it: `{"PIXELGATE_RATE_LIMIT__BURST": "5"}`.

    Going through the server's own environment settings means an override is checked
    exactly as the file's values are, and a misspelt name stops the server.
    """
    return {
        "PIXELGATE_" + name.upper().replace(".", "__"): value for name, value in overrides.items()
    }


def parse_overrides(text: str) -> dict[str, str]:
    """`"a.b=1,c=x"` -> `{"a.b": "1", "c": "x"}`; a comma splits only before `name=`,
    so JSON lists survive (`engine.devices=["cpu","cpu"]`)."""
    overrides: dict[str, str] = {}
    for item in re.split(r",(?=\s*[A-Za-z_][A-Za-z0-9_.]*=)", text.strip()):
        if not item.strip():
            continue
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"expected setting=value, got {item!r}")
        overrides[name.strip()] = value.strip()
    return overrides


def start_server(
    config: Path,
    command: Sequence[str] | None = None,
    overrides: Mapping[str, str] | None = None,
    name: str = "server",
) -> tuple[subprocess.Popen[str], int]:
    """Starts a server process (default: `python -m pixelgate.server`); returns it, its port.

    `overrides` ({"dotted.setting": "value"}) reach it as PIXELGATE_ variables; its
    stderr (the audit log) goes to `<name>.log` beside `config`.
    """
    argv = list(command or [sys.executable, "-m", "pixelgate.server"])
    log = config.with_name(f"{name}.log").open("w")
    environment = {**os.environ, **settings_environ(overrides or {})}
    process = subprocess.Popen(
        [*argv, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=environment,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("pixelgate: serving on port "):
            return process, int(line.rsplit(" ", 1)[1])
    process.wait()
    raise RuntimeError(
        f"server exited before serving: {Path(log.name).read_text(encoding='utf-8')[-2000:]}"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, all its threads (from /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # Fields after the command name, which may hold spaces, start at field 3 (state);
    # utime and stime are fields 14 and 15, in clock ticks.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def stop(process: subprocess.Popen[str]) -> None:
    """Stops a server process."""
    process.terminate()
    process.wait(30)


def dev_token(files: DevPkiFiles, subject: str = "bench") -> str:
    """An access token with every scope."""
    return mint_access_token(load_signing_key(files.signing_key), subject=subject)


def client(files: DevPkiFiles, port: int, subject: str = "bench") -> PixelgateClient:
    """A Python client over mTLS with a dev token."""
    return PixelgateClient(
        f"127.0.0.1:{port}",
        ca_file=files.ca_cert,
        cert_file=files.client_cert,
        key_file=files.client_key,
        token=dev_token(files, subject),
    )
