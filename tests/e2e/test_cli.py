"""The `pixelgate` and `pixelgate-dev` command lines, run as real processes (a real mTLS server)."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from PIL import Image
from support import wait_for

from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.pki import DevPkiFiles

TIMEOUT_S = 60
"""Wall-clock limit for every CLI run."""

PKI_FILES = (
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "client.crt",
    "client.key",
    "token-signing.key",
    "token-signing.pub",
)
PRIVATE_KEYS = ("ca.key", "server.key", "client.key", "token-signing.key")


def _clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any PIXELGATE_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELGATE_")}
    env.update(extra)
    return env


def _cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return _run_module("pixelgate.client.cli", *args, env=env, cwd=cwd)


def _dev_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return _run_module("pixelgate.dev.cli", *args, env=None, cwd=None)


def _run_module(
    module: str, *args: str, env: dict[str, str] | None, cwd: Path | None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env=env if env is not None else _clean_env(),
        cwd=cwd,
    )


@pytest.fixture
def pixelgate(
    server: Any, pki: DevPkiFiles, mint: Callable[..., str], tmp_path: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs `pixelgate --target/--ca/--cert/--key ARGS` in tmp_path; token in PIXELGATE_TOKEN."""

    def _run(*args: str, token: str | None = "default") -> subprocess.CompletedProcess[str]:
        env = (
            _clean_env()
            if token is None
            else _clean_env(PIXELGATE_TOKEN=mint() if token == "default" else token)
        )
        connection = [
            "--target",
            server.target,
            "--ca",
            str(pki.ca_cert),
            "--cert",
            str(pki.client_cert),
            "--key",
            str(pki.client_key),
        ]
        return _cli(*connection, *args, env=env, cwd=tmp_path)

    return _run


def _assert_png(path: Path, size: tuple[int, int] = (64, 64)) -> None:
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", size)


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_generate_writes_a_png(pixelgate, tmp_path):
    """`generate PROMPT -o out.png` exits 0 and writes a 64x64 PNG."""
    result = pixelgate(
        "generate", "a red fox", "-o", "out.png", "--steps", "2", "--seed", "5", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    _assert_png(tmp_path / "out.png")
    assert "seed 5" in result.stdout + result.stderr


def test_generate_several_images_numbers_the_files(pixelgate, tmp_path):
    """`-n 2 -o out.png` writes out-0.png and out-1.png, and no out.png."""
    result = pixelgate(
        "generate", "a red fox", "-o", "out.png", "--steps", "2", "-n", "2", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    _assert_png(tmp_path / "out-0.png")
    _assert_png(tmp_path / "out-1.png")
    assert not (tmp_path / "out.png").exists()
    assert (tmp_path / "out-0.png").read_bytes() != (tmp_path / "out-1.png").read_bytes()


def test_invalid_argument_is_one_line_and_exit_1(pixelgate, tmp_path):
    """A rejected request: exit 1, one stderr line `pixelgate: INVALID_ARGUMENT: ...width...`."""
    result = pixelgate("generate", "a red fox", "-o", "out.png", "--width", "100", "--quiet")
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert line.startswith("pixelgate: INVALID_ARGUMENT")
    assert "width" in line
    assert not (tmp_path / "out.png").exists()


def test_no_token_is_unauthenticated_and_exit_1(pixelgate, tmp_path):
    """Without PIXELGATE_TOKEN: one stderr line `pixelgate: UNAUTHENTICATED: ...`, exit 1."""
    result = pixelgate(
        "generate", "a red fox", "-o", "out.png", "--steps", "2", "--quiet", token=None
    )
    assert result.returncode == 1
    assert _one_error_line(result.stderr).startswith("pixelgate: UNAUTHENTICATED")
    assert not (tmp_path / "out.png").exists()


def test_an_unreadable_token_file_is_one_line_and_exit_1(pixelgate, tmp_path):
    """`--token-file` naming no file: exit 1, one line naming the file, not UNAVAILABLE."""
    missing = tmp_path / "no-such-token"
    result = pixelgate("--token-file", str(missing), "models", token=None)
    assert result.returncode == 1
    assert _one_error_line(result.stderr) == f"pixelgate: {missing}: No such file or directory"


def test_models_lists_the_tiny_model(pixelgate):
    """`models` prints the tiny test model, marked default and test model."""
    result = pixelgate("models")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith("tiny-sd-test (default) [test model] [ready]:")


def test_health_prints_serving_without_a_token(pixelgate):
    """`health` needs no token and prints SERVING."""
    result = pixelgate("health", token=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


def test_token_mints_an_rfc9068_access_token(pki):
    """`pixelgate-dev token` prints an at+jwt with the given sub, scope, aud, iss, exp, iat, jti."""
    result = _dev_cli(
        "token", "--signing-key", str(pki.signing_key), "--subject", "bob", "--scope", "models:read"
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "bob"
    assert claims["scope"] == "models:read"
    assert claims["aud"] == DEV_AUDIENCE
    assert claims["iss"] == DEV_ISSUER
    assert {"exp", "iat", "jti"} <= claims.keys()
    assert claims["exp"] > claims["iat"]
    public_key = serialization.load_pem_public_key(pki.verification_key.read_bytes())
    jwt.decode(token, public_key, algorithms=["ES256"], audience=DEV_AUDIENCE, issuer=DEV_ISSUER)


def test_a_token_bound_to_the_client_certificate_works_with_pixelgate(pki, pixelgate):
    """`pixelgate-dev token --bind-certificate C` puts C's x5t#S256 in cnf; it works over C."""
    result = _dev_cli(
        "token", "--signing-key", str(pki.signing_key), "--bind-certificate", str(pki.client_cert)
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    der = x509.load_pem_x509_certificate(pki.client_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["cnf"] == {"x5t#S256": thumbprint}
    listed = pixelgate("models", token=token)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("tiny-sd-test")


def test_an_unreadable_signing_key_is_one_line_and_exit_1(tmp_path):
    """`pixelgate-dev token --signing-key MISSING`: exit 1, one line naming the key, no token."""
    missing = tmp_path / "no-such-key"
    result = _dev_cli("token", "--signing-key", str(missing))
    assert result.returncode == 1
    assert _one_error_line(result.stderr).startswith(
        f"pixelgate-dev: cannot load signing key {missing}:"
    )
    assert result.stdout == ""


def test_the_development_commands_are_installed_apart_from_the_client():
    """`pixelgate-dev` runs pixelgate.dev.cli; `pixelgate` stays the client's own command."""
    scripts = {entry.name: entry.value for entry in entry_points(group="console_scripts")}
    assert scripts["pixelgate-dev"] == "pixelgate.dev.cli:main"
    assert scripts["pixelgate"] == "pixelgate.client.cli:main"


def test_certs_creates_a_private_pki_idempotently(tmp_path):
    """`pixelgate-dev certs --out DIR` writes every file, keys 0600; a rerun changes no byte."""
    out = tmp_path / "dev"
    first = _dev_cli("certs", "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(PKI_FILES)
    for name in PRIVATE_KEYS:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    contents = {name: (out / name).read_bytes() for name in PKI_FILES}

    again = _dev_cli("certs", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert {name: (out / name).read_bytes() for name in PKI_FILES} == contents


def test_certs_have_the_extensions_tls_validators_check(tmp_path):
    """Server cert: localhost/127.0.0.1, serverAuth, SKI/AKI; client: spiffe URI, clientAuth."""
    out = tmp_path / "dev"
    assert _dev_cli("certs", "--out", str(out)).returncode == 0
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    client = x509.load_pem_x509_certificate((out / "client.crt").read_bytes())
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    server_sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in server_sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in server_sans.get_values_for_type(x509.IPAddress)
    server_eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in server_eku
    server_ski = server.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert server_ski == x509.SubjectKeyIdentifier.from_public_key(server.public_key())
    server_aki = server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert server_aki.key_identifier == ca_ski.digest
    server.verify_directly_issued_by(ca)

    client_sans = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = client_sans.get_values_for_type(x509.UniformResourceIdentifier)
    assert any(uri.startswith("spiffe://") for uri in uris), uris
    client_eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in client_eku
    client.verify_directly_issued_by(ca)


def test_a_fleet_target_reaches_every_replica(start_server, pki, mint, tmp_path):
    """`--target ip:port,ip:port` spreads the CLI's calls over both replicas."""
    replicas = [start_server(), start_server()]
    connection = ["--ca", str(pki.ca_cert), "--cert", str(pki.client_cert)]
    connection += ["--key", str(pki.client_key), "--attempts", "2"]
    fleet = ",".join(replica.target for replica in replicas)
    env = _clean_env(PIXELGATE_TOKEN=mint())

    def reached() -> list[int]:
        return [
            len([e for e in r.audit_entries(0) if e["method"].endswith("/ListModels")])
            for r in replicas
        ]

    # Each run is a new channel, which round_robin starts at a random replica.
    for _ in range(20):
        result = _cli("--target", fleet, *connection, "models", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        if all(reached()):
            break
    wait_for(lambda: all(reached()), 5, "ListModels on both replicas")


def test_attempts_beyond_what_grpc_allows_is_a_usage_error(pixelgate):
    """`--attempts 6` exits 2: gRPC's retry policy allows at most 5 tries."""
    result = pixelgate("--attempts", "6", "health")
    assert result.returncode == 2
    assert "--attempts" in result.stderr
