"""`pixelgate`: the command-line client, plus development PKI and token helpers.

Connection settings come from flags or PIXELGATE_* environment variables and
default to the development PKI under certs/dev. The access token comes from
PIXELGATE_TOKEN, a token file, or an OAuth 2.0 token endpoint (client
credentials; the secret from a file, never from the command line; by default
asking for the scopes the command's RPC declares). On failure it prints one
line (`pixelgate: STATUS: message`, or `pixelgate: token endpoint refused: CODE
(HTTP STATUS)`) and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from pixelgate.client.client import PixelgateClient, RetryPolicy
from pixelgate.client.credentials import TokenSource
from pixelgate.client.errors import PixelgateError
from pixelgate.client.images import GeneratedImage
from pixelgate.client.oauth import ClientCredentials
from pixelgate.dev import DEV_AUDIENCE, DEV_DIR, DEV_ISSUER
from pixelgate.v1 import access_pb2
from pixelgate.v1 import image_service_pb2 as pb

EXIT_FAILURE = 1
EXIT_USAGE = 2

COMMAND_RPCS = {"generate": "GenerateImage", "models": "ListModels"}
"""The ImageService method each command calls (health calls none)."""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PIXELGATE_{name}", default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelgate", description="pixelgate client.")
    parser.add_argument(
        "--target", default=_env("TARGET", "127.0.0.1:50051"), help="server host:port"
    )
    parser.add_argument("--ca", type=Path, default=Path(_env("CA", str(DEV_DIR / "ca.crt")) or ""))
    parser.add_argument(
        "--cert", type=Path, default=Path(_env("CERT", str(DEV_DIR / "client.crt")) or "")
    )
    parser.add_argument(
        "--key", type=Path, default=Path(_env("KEY", str(DEV_DIR / "client.key")) or "")
    )
    parser.add_argument(
        "--server-name", default=_env("SERVER_NAME"), help="expected name in the server certificate"
    )
    parser.add_argument(
        "--token-file", type=Path, default=_env("TOKEN_FILE"), help="file holding the access token"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds before the call is abandoned"
    )
    oauth = parser.add_argument_group("OAuth 2.0 client credentials (instead of a token)")
    oauth.add_argument("--oauth-token-url", default=_env("OAUTH_TOKEN_URL"))
    oauth.add_argument("--client-id", default=_env("CLIENT_ID"))
    oauth.add_argument(
        "--client-secret-file",
        type=Path,
        default=_env("CLIENT_SECRET_FILE"),
        help="file holding the client secret",
    )
    oauth.add_argument(
        "--oauth-scope",
        action="append",
        help="repeatable (default: PIXELGATE_OAUTH_SCOPES, else the scopes the command needs)",
    )
    oauth.add_argument(
        "--oauth-resource",
        default=_env("OAUTH_RESOURCE"),
        help="RFC 8707 resource: the URI the issuer knows this service by",
    )
    oauth.add_argument(
        "--oauth-audience",
        default=_env("OAUTH_AUDIENCE"),
        help="the same for issuers that take `audience` instead (Auth0)",
    )
    oauth.add_argument(
        "--oauth-auth-method",
        choices=["client_secret_basic", "client_secret_post"],
        default=_env("OAUTH_AUTH_METHOD", "client_secret_basic"),
    )
    parser.add_argument(
        "--retries", type=int, default=0, help="retry a rate-limited call up to N times"
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

    token = commands.add_parser("token", help="mint a development access token (prints it)")
    token.add_argument("--signing-key", type=Path, default=DEV_DIR / "token-signing.key")
    token.add_argument("--subject", default="dev-user")
    token.add_argument("--scope", action="append", help="repeatable; default: every scope")
    token.add_argument("--lifetime", type=float, default=3600, help="seconds")
    token.add_argument("--issuer", default=DEV_ISSUER)
    token.add_argument("--audience", default=DEV_AUDIENCE)
    token.add_argument("--client-id", dest="token_client_id", help="default: the subject")
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


def _token(args: argparse.Namespace) -> TokenSource | None:
    if args.oauth_token_url:
        if not args.client_id or args.client_secret_file is None:
            raise ValueError("--oauth-token-url needs --client-id and --client-secret-file")
        secret = Path(args.client_secret_file).read_text(encoding="utf-8").strip()
        scopes = args.oauth_scope or (_env("OAUTH_SCOPES") or "").split()
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
    if args.token_file is not None:
        return Path(args.token_file)
    return _env("TOKEN") or None  # an empty variable means no token, not an empty one


def required_scopes(method: str) -> list[str]:
    """The scopes ImageService's `method` declares in the proto (its `access` option)."""
    descriptor = pb.DESCRIPTOR.services_by_name["ImageService"].methods_by_name[method]
    return list(descriptor.GetOptions().Extensions[access_pb2.access].required_scopes)


def _output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def _run_generate(client: PixelgateClient, args: argparse.Namespace) -> int:
    image_format = args.format or (args.output.suffix.lstrip(".").lower() or "png")
    if image_format not in ("png", "jpeg", "jpg", "webp"):
        print(
            f"pixelgate: cannot tell the image format from {args.output}; use --format",
            file=sys.stderr,
        )
        return EXIT_USAGE
    paths = _output_paths(args.output, args.num_images)
    filtered = 0
    # The bar shows on a terminal only, and is cleared when done: on failure the
    # one error line stays alone.
    bar = tqdm(
        total=None,
        unit="step",
        disable=True if args.quiet else None,
        leave=False,
        file=sys.stderr,
        desc="queued",
    )
    try:
        for event in client.stream(
            args.prompt,
            negative_prompt=args.negative_prompt,
            model=args.model,
            width=args.width,
            height=args.height,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            seed=args.seed,
            num_images=args.num_images,
            output_format=image_format,
            timeout=args.timeout,
        ):
            if isinstance(event, GeneratedImage) and event.filtered:
                bar.write(f"image {event.index}: withheld by the server's safety policy")
                filtered += 1
            elif isinstance(event, GeneratedImage):
                paths[event.index].write_bytes(event.data)
                bar.write(
                    f"{paths[event.index]}: {event.width}x{event.height} {event.mime_type}, "
                    f"seed {event.seed}, sha256 {event.sha256}"
                )
            elif event.step:
                bar.set_description("generating")
                bar.total = event.total_steps
                bar.update(event.step - bar.n)
    finally:
        bar.close()
    if filtered:
        print(
            f"pixelgate: {filtered} image(s) withheld by the server's safety policy",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pixelgate`."""
    args = _parser().parse_args(argv)
    if args.command == "certs":
        from pixelgate.dev.pki import write_dev_pki

        files = write_dev_pki(args.out, force=args.force)
        print(f"development PKI in {files.ca_cert.parent}")
        return 0
    if args.command == "token":
        from pixelgate.dev.tokens import ALL_SCOPES, load_signing_key, mint_access_token

        try:
            key = load_signing_key(args.signing_key)
        except (OSError, ValueError) as error:
            print(
                f"pixelgate: cannot load signing key {args.signing_key}: {error}", file=sys.stderr
            )
            return EXIT_FAILURE
        claims = dict(claim.partition("=")[::2] for claim in args.claim)
        if args.bind_certificate is not None:
            from cryptography import x509

            from pixelgate.server.client_identity import certificate_thumbprint

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
                client_id=args.token_client_id,
                extra_claims=claims,
            )
        )
        return 0
    return _call_server(args)


def _call_server(args: argparse.Namespace) -> int:
    try:
        client = PixelgateClient(
            args.target,
            ca_file=args.ca,
            cert_file=args.cert,
            key_file=args.key,
            token=_token(args),
            server_name=args.server_name,
            retry=RetryPolicy(max_attempts=args.retries + 1) if args.retries > 0 else None,
        )
    except OSError as error:
        print(f"pixelgate: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as error:
        print(f"pixelgate: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client:
            if args.command == "generate":
                return _run_generate(client, args)
            if args.command == "models":
                for model in client.list_models(timeout=args.timeout):
                    default = " (default)" if model.is_default else ""
                    test = " [test model]" if model.is_test_model else ""
                    state = pb.ModelInfo.State.Name(model.state).removeprefix("STATE_").lower()
                    failure = f" ({model.load_error})" if model.load_error else ""
                    print(
                        f"{model.id}{default}{test} [{state.replace('_', ' ')}{failure}]:"
                        f" {model.description}; "
                        f"{model.min_size}..{model.max_width}x{model.max_height} px, "
                        f"default {model.default_width}x{model.default_height}, "
                        f"steps <= {model.max_steps} (default {model.default_steps})"
                    )
                return 0
            print(client.health(args.service, timeout=args.timeout))
            return 0
    except PixelgateError as error:
        print(f"pixelgate: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:  # the token file (read before each call) or an output file
        print(f"pixelgate: {error.filename}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("pixelgate: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
