"""The `pixelgate` command line: its flags, its commands, and their PIXELGATE_* defaults."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pixelgate.client.service_config import ServiceConfig

DEFAULT_TARGET = "127.0.0.1:50051"
"""The server a bare `pixelgate` calls: a local `make serve`."""

DEFAULT_CERTS_DIR = Path("certs/dev")
"""The TLS files' default folder: where `make certs` writes the development PKI."""


def env(name: str, default: str | None = None) -> str | None:
    """The PIXELGATE_`name` environment variable, else `default`."""
    return os.environ.get(f"PIXELGATE_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    """The parser of `pixelgate`: connection, token and OAuth flags, then one command."""
    parser = argparse.ArgumentParser(prog="pixelgate", description="pixelgate client.")
    parser.add_argument(
        "--target",
        default=env("TARGET", DEFAULT_TARGET),
        help="server host:port, or a fleet: dns:///name:port or a list ip:port,ip:port"
        " (calls spread over its healthy replicas)",
    )
    parser.add_argument("--ca", type=Path, default=_path_env("CA", "ca.crt"))
    parser.add_argument("--cert", type=Path, default=_path_env("CERT", "client.crt"))
    parser.add_argument("--key", type=Path, default=_path_env("KEY", "client.key"))
    parser.add_argument(
        "--server-name", default=env("SERVER_NAME"), help="expected name in the server certificate"
    )
    parser.add_argument(
        "--token-file", type=Path, default=env("TOKEN_FILE"), help="file holding the access token"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds before the call is abandoned"
    )
    _add_oauth_arguments(parser)
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="wait out a rate limit up to N times, as long as the server's retry-after says",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=ServiceConfig.max_attempts,
        choices=range(1, 6),
        metavar="{1..5}",
        help="tries per call when a replica cannot take it now (UNAVAILABLE), each on the"
        " next replica after the server's pushback; 1 = no retries (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser(
        "generate", help="generate images (token from PIXELGATE_TOKEN or --token-file)"
    )
    generate.add_argument("prompt")
    generate.add_argument("-o", "--output", type=Path, default=Path("image.png"))
    generate.add_argument("--negative-prompt", default="")
    generate.add_argument("--model", default="")
    generate.add_argument("--width", type=int, default=0)
    generate.add_argument("--height", type=int, default=0)
    generate.add_argument("--steps", type=int, default=0)
    generate.add_argument("--guidance-scale", type=float, default=None)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("-n", "--num-images", type=int, default=1)
    generate.add_argument(
        "--format", choices=["png", "jpeg", "webp"], help="default: from --output's suffix"
    )
    generate.add_argument("--quiet", action="store_true", help="no progress bar")

    commands.add_parser("models", help="list the server's models")
    health = commands.add_parser("health", help="check the server's health (needs no token)")
    health.add_argument("--service", default="")
    return parser


def _path_env(name: str, dev_file: str) -> Path:
    return Path(env(name, str(DEFAULT_CERTS_DIR / dev_file)) or "")


def _add_oauth_arguments(parser: argparse.ArgumentParser) -> None:
    oauth = parser.add_argument_group("OAuth 2.0 client credentials (instead of a token)")
    oauth.add_argument("--oauth-token-url", default=env("OAUTH_TOKEN_URL"))
    oauth.add_argument("--client-id", default=env("CLIENT_ID"))
    oauth.add_argument(
        "--client-secret-file",
        type=Path,
        default=env("CLIENT_SECRET_FILE"),
        help="file holding the client secret",
    )
    oauth.add_argument(
        "--oauth-scope",
        action="append",
        help="repeatable (default: PIXELGATE_OAUTH_SCOPES, else the scopes the command needs)",
    )
    oauth.add_argument(
        "--oauth-resource",
        default=env("OAUTH_RESOURCE"),
        help="RFC 8707 resource: the URI the issuer knows this service by",
    )
    oauth.add_argument(
        "--oauth-audience",
        default=env("OAUTH_AUDIENCE"),
        help="the same for issuers that take `audience` instead (Auth0)",
    )
    oauth.add_argument(
        "--oauth-auth-method",
        choices=["client_secret_basic", "client_secret_post"],
        default=env("OAUTH_AUTH_METHOD", "client_secret_basic"),
    )
