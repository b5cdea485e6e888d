"""TokenVerifier and token_keys: only well-formed tokens from configured issuers pass."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm

from pixelgate.dev import DEV_AUDIENCE, DEV_ISSUER
from pixelgate.dev.pki import DevPkiFiles
from pixelgate.dev.tokens import SigningKey, generate_signing_key, mint_access_token
from pixelgate.server.core.errors import Unauthenticated
from pixelgate.server.security.key_sources import StaticKeys
from pixelgate.server.security.token_keys import (
    UnusableKeyError,
    VerificationKey,
    key_id,
    load_public_key,
    verification_key,
)
from pixelgate.server.security.token_verifier import (
    MAX_TOKEN_BYTES,
    TokenVerifier,
    TrustedIssuer,
    VerifiedToken,
)

ALGORITHMS = ("ES256", "EdDSA", "RS256", "PS256")
ISSUER_B = "https://other-issuer.pixelgate.invalid"


# --- helpers -------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _claims(**overrides: Any) -> dict[str, Any]:
    """A complete, currently valid claim set for the development issuer."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": DEV_ISSUER,
        "sub": "test-user",
        "aud": DEV_AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "scope": "images:generate",
    }
    claims.update(overrides)
    return claims


def _sign(claims: Mapping[str, Any], key: SigningKey, **headers: Any) -> str:
    """Signs exactly `claims` with ES256; `kid` defaults to the key's thumbprint."""
    headers.setdefault("typ", "at+jwt")
    headers.setdefault("kid", key_id(key.public_key()))
    return jwt.encode(dict(claims), key, algorithm="ES256", headers=headers)


def _with_signature(token: str, signature: bytes) -> str:
    header, payload, _ = token.split(".")
    return f"{header}.{payload}.{_b64(signature)}"


def _issuer(name: str, audiences: list[str], keys: list[VerificationKey]) -> TrustedIssuer:
    return TrustedIssuer(name, tuple(audiences), StaticKeys({key.kid: key for key in keys}))


def _verify(verifier: TokenVerifier, token: str) -> VerifiedToken:
    return asyncio.run(verifier.verify(token))


def _refused(verifier: TokenVerifier, token: str, reason: str = "") -> Unauthenticated:
    """Asserts `token` is refused (with `reason` in the message) and never echoed back."""
    with pytest.raises(Unauthenticated) as caught:
        _verify(verifier, token)
    message = caught.value.message
    assert reason in message
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in message
    if token:
        assert token not in message
    return caught.value


@pytest.fixture(scope="module")
def trusted_key(pki: DevPkiFiles) -> VerificationKey:
    return verification_key(load_public_key(pki.verification_key), ALGORITHMS)


@pytest.fixture(scope="module")
def dev_issuer(trusted_key: VerificationKey) -> TrustedIssuer:
    return _issuer(DEV_ISSUER, [DEV_AUDIENCE], [trusted_key])


@pytest.fixture(scope="module")
def verifier(dev_issuer: TrustedIssuer) -> TokenVerifier:
    return TokenVerifier([dev_issuer], leeway_seconds=30)


@pytest.fixture(scope="module")
def attacker_key() -> ec.EllipticCurvePrivateKey:
    return generate_signing_key()


# --- accepted tokens -----------------------------------------------------------------------


def test_good_token_gives_principal(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """A valid development token yields its subject, scopes, client id, issuer and jti."""
    token = mint(
        subject="alice",
        scopes=["images:generate", "models:read"],
        client_id="cli-app",
        extra_claims={"jti": "token-1"},
    )
    principal = _verify(verifier, token)
    assert principal.subject == "alice"
    assert principal.scopes == frozenset({"images:generate", "models:read"})
    assert principal.client_id == "cli-app"
    assert principal.issuer == DEV_ISSUER
    assert principal.token_id == "token-1"


def test_token_without_scope_has_no_scopes(
    verifier: TokenVerifier, signing_key: SigningKey
) -> None:
    """A token with no `scope` claim is accepted but grants no scopes."""
    claims = _claims()
    del claims["scope"]
    principal = _verify(verifier, _sign(claims, signing_key))
    assert principal.scopes == frozenset()
    assert principal.client_id is None


def test_application_at_jwt_typ_accepted(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """`typ: application/at+jwt` is the same media type as `at+jwt` and is accepted."""
    token = mint(extra_headers={"typ": "application/at+jwt"})
    assert _verify(verifier, token).subject == "test-user"


def test_audience_list_containing_service_accepted(
    verifier: TokenVerifier, signing_key: SigningKey
) -> None:
    """A token whose `aud` list includes this service is accepted."""
    token = _sign(_claims(aud=["someone-else", DEV_AUDIENCE]), signing_key)
    assert _verify(verifier, token).subject == "test-user"


def test_token_without_kid_uses_issuers_only_key(
    verifier: TokenVerifier, signing_key: SigningKey
) -> None:
    """With one configured key, a token without `kid` is verified against that key."""
    token = jwt.encode(_claims(), signing_key, algorithm="ES256", headers={"typ": "at+jwt"})
    assert _verify(verifier, token).subject == "test-user"


def test_token_of_exactly_max_size_accepted(
    verifier: TokenVerifier, mint: Callable[..., str]
) -> None:
    """A token of exactly MAX_TOKEN_BYTES characters is not refused for its size."""
    token = ""
    for header_pad in ("", "x", "xx", "xxx"):
        for pad in range(5500, 6300):
            token = mint(extra_claims={"pad": "p" * pad}, extra_headers={"pad": header_pad})
            if len(token) >= MAX_TOKEN_BYTES:
                break
        if len(token) == MAX_TOKEN_BYTES:
            break
    assert len(token) == MAX_TOKEN_BYTES
    assert _verify(verifier, token).subject == "test-user"


# --- time claims ---------------------------------------------------------------------------


def test_expired_token_refused(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """A token that expired an hour ago is refused as expired."""
    token = mint(now=time.time() - 7200, lifetime_seconds=3600)
    _refused(verifier, token, "expired")


def test_expired_within_leeway_accepted(verifier: TokenVerifier, signing_key: SigningKey) -> None:
    """A token 29 s past `exp` passes with 30 s leeway (clock skew tolerated)."""
    now = time.time()
    exp = int(now) + 1 - 29  # ceil(now) - 29: at most 29 s in the past
    token = _sign(_claims(iat=exp - 600, exp=exp), signing_key)
    assert _verify(verifier, token).subject == "test-user"


def test_expired_beyond_leeway_refused(verifier: TokenVerifier, signing_key: SigningKey) -> None:
    """A token 31 s past `exp` is refused with 30 s leeway."""
    exp = int(time.time()) - 31  # floor(now) - 31: at least 31 s in the past
    token = _sign(_claims(iat=exp - 600, exp=exp), signing_key)
    _refused(verifier, token, "expired")


def test_nbf_in_future_refused(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """A token not valid for another hour (`nbf`) is refused."""
    token = mint(extra_claims={"nbf": int(time.time()) + 3600})
    _refused(verifier, token, "not yet valid")


def test_iat_far_in_future_refused(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """A token issued an hour in the future is refused."""
    token = mint(now=time.time() + 3600)
    _refused(verifier, token, "not yet valid")


# --- issuer, audience, required claims -----------------------------------------------------


def test_wrong_issuer_refused(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """A token from an issuer that is not configured is refused, even if signed by a known key."""
    _refused(verifier, mint(issuer="https://evil.invalid"), "issuer is not trusted")


def test_wrong_audience_refused(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """A token meant for another service (`aud`) is refused."""
    _refused(verifier, mint(audience="some-other-api"), "aud")


@pytest.mark.parametrize("claim", ["exp", "aud", "sub", "iat"])
def test_missing_required_claim_refused(
    verifier: TokenVerifier, signing_key: SigningKey, claim: str
) -> None:
    """A correctly signed token lacking a required claim is refused."""
    claims = _claims()
    del claims[claim]
    _refused(verifier, _sign(claims, signing_key), "required claim")


def test_missing_issuer_refused(verifier: TokenVerifier, signing_key: SigningKey) -> None:
    """A correctly signed token without `iss` is refused as not from a trusted issuer."""
    claims = _claims()
    del claims["iss"]
    _refused(verifier, _sign(claims, signing_key), "issuer is not trusted")


def test_empty_subject_refused(verifier: TokenVerifier, signing_key: SigningKey) -> None:
    """A correctly signed token with an empty `sub` is refused."""
    _refused(verifier, _sign(_claims(sub=""), signing_key), "sub")


def test_malformed_scope_refused(verifier: TokenVerifier, signing_key: SigningKey) -> None:
    """A `scope` claim that is not a space-separated string is refused."""
    token = _sign(_claims(scope=["images:generate"]), signing_key)
    _refused(verifier, token, "scope")


# --- algorithm and signature attacks -------------------------------------------------------


def test_alg_none_refused(verifier: TokenVerifier, trusted_key: VerificationKey) -> None:
    """An unsigned token (`alg: none`) is refused."""
    header = {"alg": "none", "typ": "at+jwt", "kid": trusted_key.kid}
    _refused(verifier, f"{_segment(header)}.{_segment(_claims())}.", "algorithm")


def test_alg_none_without_kid_refused(verifier: TokenVerifier) -> None:
    """An unsigned token without `kid` is refused too (the single key does not help it)."""
    header = {"alg": "none", "typ": "at+jwt"}
    _refused(verifier, f"{_segment(header)}.{_segment(_claims())}.", "algorithm")


def test_hs256_with_public_key_as_secret_refused(
    verifier: TokenVerifier, trusted_key: VerificationKey, pki: DevPkiFiles
) -> None:
    """HS256 keyed with the issuer's public-key PEM (algorithm confusion) is refused."""
    pem = pki.verification_key.read_bytes()
    header = {"alg": "HS256", "typ": "at+jwt", "kid": trusted_key.kid}
    signing_input = f"{_segment(header)}.{_segment(_claims())}"
    for secret in (pem, pem.strip()):
        mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        _refused(verifier, f"{signing_input}.{_b64(mac)}", "algorithm")


def test_signature_from_other_key_with_trusted_kid_refused(
    verifier: TokenVerifier, trusted_key: VerificationKey, attacker_key: ec.EllipticCurvePrivateKey
) -> None:
    """An ES256 token signed by another key but naming the trusted key's `kid` is refused."""
    token = _sign(_claims(), attacker_key, kid=trusted_key.kid)
    _refused(verifier, token, "signature")


def test_unknown_kid_refused(
    verifier: TokenVerifier, attacker_key: ec.EllipticCurvePrivateKey
) -> None:
    """A token naming a key the issuer does not have is refused."""
    _refused(verifier, _sign(_claims(), attacker_key), "signing key is not known")


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../etc/passwd",
        "../token-signing.pub",
        "' OR '1'='1",
        "x'; DROP TABLE keys; --",
        "",
    ],
)
def test_hostile_kid_refused(verifier: TokenVerifier, signing_key: SigningKey, kid: str) -> None:
    """A `kid` with path traversal or SQL text is just an unknown key, even on a valid signature."""
    _refused(verifier, _sign(_claims(), signing_key, kid=kid), "signing key is not known")


@pytest.mark.parametrize("kid", [["a"], {"a": 1}, 1, None])
def test_non_string_kid_refused(
    verifier: TokenVerifier, mint: Callable[..., str], kid: Any
) -> None:
    """A `kid` that is not a string (list, object, number, null) is refused."""
    _, payload, signature = mint().split(".")
    header = {"alg": "ES256", "typ": "at+jwt", "kid": kid}
    _refused(verifier, f"{_segment(header)}.{payload}.{signature}")


@pytest.mark.parametrize(
    "embedded",
    ["jwk", "jku", "x5u", "x5c"],
)
def test_key_hints_in_header_ignored(
    verifier: TokenVerifier,
    trusted_key: VerificationKey,
    attacker_key: ec.EllipticCurvePrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    embedded: str,
) -> None:
    """`jwk`/`jku`/`x5u`/`x5c` headers naming an attacker's key are ignored, never fetched."""

    def no_fetch(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the verifier must never fetch keys named by a token")

    monkeypatch.setattr(urllib.request, "urlopen", no_fetch)
    attacker_jwk = ECAlgorithm.to_jwk(attacker_key.public_key(), as_dict=True)
    hints: dict[str, Any] = {
        "jwk": attacker_jwk,
        "jku": "https://attacker.invalid/jwks.json",
        "x5u": "https://attacker.invalid/cert.pem",
        "x5c": ["MIIBattacker"],
    }
    # Naming the trusted kid, without a kid, and with the attacker's own kid: all refused.
    for kid in (trusted_key.kid, None, key_id(attacker_key.public_key())):
        headers: dict[str, Any] = {"typ": "at+jwt", embedded: hints[embedded]}
        if kid is not None:
            headers["kid"] = kid
        token = jwt.encode(_claims(), attacker_key, algorithm="ES256", headers=headers)
        _refused(verifier, token)


def test_zero_signature_refused(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """An ES256 signature with r = s = 0 (64 zero bytes) is refused (CVE-2022-21449 style)."""
    _refused(verifier, _with_signature(mint(), bytes(64)), "signature")


def test_empty_signature_refused(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """A token with its signature stripped is refused."""
    _refused(verifier, _with_signature(mint(), b""))


def test_tampered_payload_refused(
    verifier: TokenVerifier, mint: Callable[..., str], signing_key: SigningKey
) -> None:
    """Changing a claim of a signed token (here `sub`) invalidates it."""
    header, _, signature = mint(subject="alice").split(".")
    forged = _sign(_claims(sub="admin"), signing_key).split(".")[1]
    _refused(verifier, f"{header}.{forged}.{signature}", "signature")


def test_token_for_issuer_b_signed_with_issuer_a_key_refused(
    trusted_key: VerificationKey, dev_issuer: TrustedIssuer, signing_key: SigningKey
) -> None:
    """With two trusted issuers, A's key cannot sign tokens that claim to be from B."""
    key_b = generate_signing_key()
    issuer_b = _issuer(ISSUER_B, [DEV_AUDIENCE], [verification_key(key_b.public_key(), ALGORITHMS)])
    verifier = TokenVerifier([dev_issuer, issuer_b])
    # Sanity: each issuer's own tokens pass.
    token_b = mint_access_token(key_b, subject="b", issuer=ISSUER_B)
    assert _verify(verifier, token_b).issuer == ISSUER_B
    assert _verify(verifier, mint_access_token(signing_key, subject="a")).issuer == DEV_ISSUER
    # A's key, with and without A's kid, claiming B.
    _refused(verifier, mint_access_token(signing_key, subject="a", issuer=ISSUER_B))
    token = jwt.encode(
        _claims(iss=ISSUER_B), signing_key, algorithm="ES256", headers={"typ": "at+jwt"}
    )
    _refused(verifier, token)


# --- header checks -------------------------------------------------------------------------


def test_plain_jwt_typ_refused(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """`typ: JWT` (an ID token or other JWT, not an access token) is refused."""
    _refused(verifier, mint(extra_headers={"typ": "JWT"}), "typ")


def test_missing_typ_refused(verifier: TokenVerifier, signing_key: SigningKey) -> None:
    """A token without a `typ` header is refused when only at+jwt is accepted."""
    kid = key_id(signing_key.public_key())
    token = jwt.encode(_claims(), signing_key, algorithm="ES256", headers={"kid": kid, "typ": None})
    assert "typ" not in jwt.get_unverified_header(token)
    _refused(verifier, token, "typ")


def test_plain_jwt_typ_accepted_when_configured(
    dev_issuer: TrustedIssuer, mint: Callable[..., str]
) -> None:
    """A verifier configured for `JWT` tokens accepts them (token_types is honoured)."""
    verifier = TokenVerifier([dev_issuer], token_types=("at+jwt", "JWT"))
    assert _verify(verifier, mint(extra_headers={"typ": "JWT"})).subject == "test-user"


@pytest.mark.parametrize(
    "crit_headers",
    [{"crit": ["exp"], "exp": 1}, {"crit": ["b64"], "b64": True}, {"crit": []}],
)
def test_crit_header_refused(
    verifier: TokenVerifier, mint: Callable[..., str], crit_headers: dict[str, Any]
) -> None:
    """A token with a `crit` header (extensions we do not implement) is refused."""
    _refused(verifier, mint(extra_headers=crit_headers))


def test_oversized_token_refused(verifier: TokenVerifier, mint: Callable[..., str]) -> None:
    """A token longer than 8192 characters is refused before parsing, even if validly signed."""
    token = mint(extra_claims={"pad": "p" * 7000})
    assert len(token) > MAX_TOKEN_BYTES
    _refused(verifier, token, "too large")


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not-a-token",
        "a.b.c",
        "..",
        "a.b",
        "a.b.c.d.e",
        "Bearer abc",
        "é.é.é",
        "\x00\x01\x02",
        "!!!!.!!!!.!!!!",
        _segment([1, 2]) + "." + _segment({}) + ".",
        _segment({"alg": "ES256", "typ": "at+jwt"}) + "." + _b64(b"not json") + ".AAAA",
        _segment({"alg": "ES256", "typ": "at+jwt"}) + "." + _segment([1]) + ".AAAA",
        _b64(b"\xff\xfe") + "." + _segment({}) + ".AAAA",
        "x" * (MAX_TOKEN_BYTES + 1),
    ],
)
def test_garbage_refused(verifier: TokenVerifier, garbage: str) -> None:
    """Strings that are not JWTs are refused as Unauthenticated, never another exception."""
    _refused(verifier, garbage)


@pytest.mark.parametrize("alg", [["ES256"], {"name": "ES256"}])
def test_non_string_alg_refused(
    verifier: TokenVerifier, mint: Callable[..., str], trusted_key: VerificationKey, alg: Any
) -> None:
    """A token whose `alg` header is a JSON list or object is refused as Unauthenticated."""
    _, payload, signature = mint().split(".")
    header = {"alg": alg, "typ": "at+jwt", "kid": trusted_key.kid}
    _refused(verifier, f"{_segment(header)}.{payload}.{signature}")


# --- error messages ------------------------------------------------------------------------


def test_error_messages_do_not_contain_token_or_claims(
    verifier: TokenVerifier, signing_key: SigningKey
) -> None:
    """Refusal messages never echo the token or the claim values it carries."""
    marker = "SECRETMARKER"
    tokens = [
        _sign(_claims(sub=marker, exp=int(time.time()) - 3600), signing_key),
        _sign(_claims(sub=marker, aud=marker), signing_key),
        _sign(_claims(sub=marker, iss=f"https://{marker}.invalid"), signing_key),
        _sign(_claims(sub=marker), signing_key, kid=marker),
        _sign(_claims(sub=marker), signing_key, typ=marker),
        _with_signature(_sign(_claims(sub=marker), signing_key), bytes(64)),
    ]
    for token in tokens:
        error = _refused(verifier, token)
        assert marker not in error.message
        assert marker not in str(error)


# --- token_keys ----------------------------------------------------------------------------


def _b64_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJ"
    "ECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FD"
    "W2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4v"
    "MQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)


def test_key_id_is_rfc7638_thumbprint_rsa() -> None:
    """key_id of the RFC 7638 section 3.1 RSA key is the thumbprint the RFC gives."""
    key = rsa.RSAPublicNumbers(e=_b64_int("AQAB"), n=_b64_int(RFC7638_N)).public_key()
    assert key_id(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_key_id_is_rfc8037_thumbprint_ed25519() -> None:
    """key_id of the RFC 8037 appendix A Ed25519 key is the thumbprint that RFC gives."""
    raw = base64.urlsafe_b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    assert key_id(key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_key_id_of_ec_key_matches_pyjwt_jwk_thumbprint() -> None:
    """key_id of a P-256 key (x with a leading zero byte) is the thumbprint of its full JWK."""
    # RFC 7518 6.2.1.2: x and y are always 32 bytes; pick a key whose x needs the padding.
    scalar = next(
        n
        for n in range(1, 10_000)
        if ec.derive_private_key(n, ec.SECP256R1()).public_key().public_numbers().x < 2**248
    )
    key = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
    members = ECAlgorithm.to_jwk(key, as_dict=True)
    canonical = json.dumps(
        {name: members[name] for name in ("crv", "kty", "x", "y")},
        separators=(",", ":"),
        sort_keys=True,
    )
    assert key_id(key) == _b64(hashlib.sha256(canonical.encode()).digest())


def test_load_public_key_reads_dev_key(pki: DevPkiFiles, signing_key: SigningKey) -> None:
    """The development public key loads and has the signing key's thumbprint as kid."""
    key = load_public_key(pki.verification_key)
    assert key_id(key) == key_id(signing_key.public_key())
    assert verification_key(key, ALGORITHMS).algorithms == frozenset({"ES256"})


def test_private_key_file_refused(pki: DevPkiFiles) -> None:
    """Configuring the private signing key as a verification key is refused."""
    with pytest.raises(UnusableKeyError, match="private key"):
        load_public_key(pki.signing_key)


def test_missing_and_non_pem_key_files_refused(tmp_path: Path) -> None:
    """A missing file or a file that is not a PEM public key gives UnusableKeyError."""
    with pytest.raises(UnusableKeyError, match="cannot read"):
        load_public_key(tmp_path / "nope.pub")
    junk = tmp_path / "junk.pub"
    junk.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    with pytest.raises(UnusableKeyError, match="not a PEM public key"):
        load_public_key(junk)


def test_rsa_1024_key_has_no_allowed_algorithms(tmp_path: Path) -> None:
    """An RSA key under 2048 bits cannot be used to verify tokens."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "weak.pub"
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(UnusableKeyError, match="2048"):
        verification_key(load_public_key(path), ALGORITHMS)


def test_ec_key_with_rsa_only_allowlist_refused() -> None:
    """A P-256 key cannot be configured when only RS256 is allowed."""
    key = generate_signing_key().public_key()
    with pytest.raises(UnusableKeyError, match=key_id(key)):
        verification_key(key, ("RS256",))


def test_hmac_and_none_never_allowed() -> None:
    """Even when the allowlist names HS256 or none, a public key only gets its own algorithm."""
    key = generate_signing_key().public_key()
    assert verification_key(key, ("ES256", "HS256", "none")).algorithms == frozenset({"ES256"})
    with pytest.raises(UnusableKeyError):
        verification_key(key, ("HS256", "none"))
