"""`pixelgate`: the command-line client (generate, models, health).

Connection settings come from flags or PIXELGATE_* environment variables and
default to the development PKI under certs/dev. The access token comes from
PIXELGATE_TOKEN, a token file, or an OAuth 2.0 token endpoint (client
credentials; the secret from a file, never from the command line; by default
asking for the scopes the command's RPC declares). On failure it prints one
line (`pixelgate: STATUS: message`, or `pixelgate: token endpoint refused: CODE
(HTTP STATUS)`) and exits 1. Development certificates and tokens come from
`pixelgate-dev`, which ships with the server.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pixelgate.client.cli.arguments import build_parser
from pixelgate.client.cli.commands import COMMANDS, EXIT_CANCELLED, EXIT_FAILURE, EXIT_USAGE
from pixelgate.client.cli.token_source import token_source
from pixelgate.client.client import PixelgateClient, RetryPolicy
from pixelgate.client.errors import PixelgateError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pixelgate`: parses `argv`, runs the command, returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        client = PixelgateClient(
            args.target,
            ca_file=args.ca,
            cert_file=args.cert,
            key_file=args.key,
            token=token_source(args),
            server_name=args.server_name,
            retry=RetryPolicy(max_attempts=args.retries + 1) if args.retries > 0 else None,
            attempts=args.attempts,
        )
    except OSError as error:
        print(f"pixelgate: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as error:
        print(f"pixelgate: {error}", file=sys.stderr)
        return EXIT_USAGE
    command = COMMANDS[args.command]
    try:
        with client:
            return command(client, args)
    except PixelgateError as error:
        print(f"pixelgate: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:  # the token file (read before each call) or an output file
        print(f"pixelgate: {error.filename}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("pixelgate: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
