"""`pixelgate-dev`: the development PKI and access tokens, for a laptop and the tests.

`certs` writes the throwaway PKI and token keys (`make certs`); `token` mints an
access token signed by the development issuer (`make token`). Nothing here is
for production, so none of it ships with the client.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from pixelgate.dev import DEV_AUDIENCE, DEV_DIR, DEV_ISSUER
from pixelgate.dev.pki import write_dev_pki
from pixelgate.dev.tokens import ALL_SCOPES, load_signing_key, mint_access_token
from pixelgate.server.security.client_identity import certificate_thumbprint

EXIT_FAILURE = 1

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of `pixelgate-dev`: the `token` and `certs` commands."""
    parser = argparse.ArgumentParser(
        prog="pixelgate-dev", description="pixelgate development certificates and tokens."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    token = commands.add_parser("token", help="mint a development access token (prints it)")
    token.add_argument("--signing-key", type=Path, default=DEV_DIR / "token-signing.key")
    token.add_argument("--subject", default="dev-user")
    token.add_argument("--scope", action="append", help="repeatable; default: every scope")
    token.add_argument("--lifetime", type=float, default=3600, help="seconds")
    token.add_argument("--issuer", default=DEV_ISSUER)
    token.add_argument("--audience", default=DEV_AUDIENCE)
    token.add_argument("--client-id", help="default: the subject")
    token.add_argument(
        "--bind-certificate",
        type=Path,
        help="bind the token to this client certificate (RFC 8705 cnf x5t#S256)",
    )
    token.add_argument(
        "--claim", action="append", default=[], metavar="NAME=VALUE", help="extra string claim"
    )

    certs = commands.add_parser("certs", help="create the development PKI and token keys")
    certs.add_argument("--out", type=Path, default=DEV_DIR)
    certs.add_argument("--force", action="store_true", help="replace an existing set")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pixelgate-dev`: parses `argv`, runs the command, returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "certs":
        return _certs(args)
    return _token(args)


def _certs(args: argparse.Namespace) -> int:
    files = write_dev_pki(args.out, force=args.force)
    print(f"development PKI in {files.ca_cert.parent}")
    return 0


def _token(args: argparse.Namespace) -> int:
    try:
        key = load_signing_key(args.signing_key)
    except (OSError, ValueError) as error:
        print(
            f"pixelgate-dev: cannot load signing key {args.signing_key}: {error}", file=sys.stderr
        )
        return EXIT_FAILURE
    claims: dict[str, object] = dict(claim.partition("=")[::2] for claim in args.claim)
    if args.bind_certificate is not None:
        certificate = x509.load_pem_x509_certificate(args.bind_certificate.read_bytes())
        claims["cnf"] = {"x5t#S256": certificate_thumbprint(certificate)}
    print(
        mint_access_token(
            key,
            subject=args.subject,
            scopes=args.scope or ALL_SCOPES,
            lifetime_seconds=args.lifetime,
            issuer=args.issuer,
            audience=args.audience,
            client_id=args.client_id,
            extra_claims=claims,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
