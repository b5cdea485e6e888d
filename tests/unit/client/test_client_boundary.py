"""The client stands alone: `pixelgate.client` and its CLI never load the server or dev tools.

The client ships as its own distribution (stubs, library, `pixelgate` CLI) without the
server, its ML stack or the development PKI helpers, so importing them would fail there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pixelgate.dev import DEV_DIR

FORBIDDEN_PACKAGES = ("pixelgate.server", "pixelgate.dev", "torch", "diffusers", "transformers")
"""Top-level names the client must not load, with everything under them."""

CLIENT_COMMANDS = ("generate", "models", "health")

_PROBE = textwrap.dedent(
    """
    import contextlib, io, json, sys

    import pixelgate.client
    import pixelgate.client.cli

    helps = {}
    for argv in (["--help"], *([command, "--help"] for command in sys.argv[1:])):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            pixelgate.client.cli.main(argv)
        helps[" ".join(argv)] = out.getvalue()
    print(json.dumps({"modules": sorted(sys.modules), "helps": helps}))
    """
)


def _forbidden(module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in FORBIDDEN_PACKAGES)


@pytest.fixture(scope="module")
def probe() -> dict[str, object]:
    """A fresh interpreter that imports the client and prints every command's `--help`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELGATE_")}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *CLIENT_COMMANDS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_the_client_and_its_cli_load_no_server_dev_or_ml_module(probe):
    """Importing pixelgate.client and building every `pixelgate` parser loads none of them."""
    loaded = [module for module in probe["modules"] if _forbidden(module)]
    assert loaded == []


def test_pixelgate_offers_only_the_client_commands(probe):
    """`pixelgate --help` lists generate, models, health; token and certs are pixelgate-dev's."""
    helps = probe["helps"]
    assert "{generate,models,health}" in helps["--help"]
    for command in CLIENT_COMMANDS:
        assert helps[f"{command} --help"].startswith(f"usage: pixelgate {command}")


def test_the_client_defaults_to_the_dev_pki_that_make_certs_writes(monkeypatch):
    """With no flags or PIXELGATE_* variables the TLS files are the ones `make certs` writes."""
    from pixelgate.client.cli.arguments import build_parser

    for name in ("PIXELGATE_CA", "PIXELGATE_CERT", "PIXELGATE_KEY"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["health"])
    assert (args.ca, args.cert, args.key) == (
        DEV_DIR / "ca.crt",
        DEV_DIR / "client.crt",
        DEV_DIR / "client.key",
    )
