"""Where `pixelgate` gets its access token: an OAuth 2.0 token endpoint, a file, or the env."""

from __future__ import annotations

import argparse
from pathlib import Path

from pixelgate.client.cli.arguments import env
from pixelgate.client.credentials import TokenSource
from pixelgate.client.oauth import ClientCredentials
from pixelgate.v1 import access_pb2
from pixelgate.v1 import image_service_pb2 as pb

COMMAND_RPCS = {"generate": "GenerateImage", "models": "ListModels"}
"""The ImageService method each command calls (health calls none)."""


def token_source(args: argparse.Namespace) -> TokenSource | None:
    """The token `args` name: client credentials, else --token-file, else PIXELGATE_TOKEN.

    Raises ValueError for client credentials without a client id or secret file.
    """
    if args.oauth_token_url:
        return _client_credentials(args)
    if args.token_file is not None:
        return Path(args.token_file)
    return env("TOKEN") or None  # an empty variable means no token, not an empty one


def required_scopes(method: str) -> list[str]:
    """The scopes ImageService's `method` declares in the proto (its `access` option)."""
    descriptor = pb.DESCRIPTOR.services_by_name["ImageService"].methods_by_name[method]
    return list(descriptor.GetOptions().Extensions[access_pb2.access].required_scopes)


def _client_credentials(args: argparse.Namespace) -> ClientCredentials:
    if not args.client_id or args.client_secret_file is None:
        raise ValueError("--oauth-token-url needs --client-id and --client-secret-file")
    # The secret comes from a file only: a command line is visible to every local user.
    secret = Path(args.client_secret_file).read_text(encoding="utf-8").strip()
    scopes = args.oauth_scope or (env("OAUTH_SCOPES") or "").split()
    if not scopes and args.command in COMMAND_RPCS:
        scopes = required_scopes(COMMAND_RPCS[args.command])
    return ClientCredentials(
        args.oauth_token_url,
        args.client_id,
        secret,
        scopes=scopes,
        audience=args.oauth_audience,
        resource=args.oauth_resource,
        auth_method=args.oauth_auth_method,
    )
