"""load_settings: safe defaults, TOML files, PIXELGATE_ variables, and clear ConfigErrors for
bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelgate.dev import DEV_AUDIENCE, DEV_DIR, DEV_ISSUER
from pixelgate.server.core.config import ConfigError, Settings, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pixelgate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, text))
    return str(caught.value)


ISSUER_TOML = """
[[auth.issuers]]
issuer = "https://login.example.com"
audiences = ["pixelgate-prod"]
public_key_files = ["keys/issuer.pub"]
"""


# --- defaults ------------------------------------------------------------------------------


def test_defaults_use_dev_pki_and_tiny_model() -> None:
    """With no file: loopback, the certs/dev PKI, the dev issuer and the tiny test model."""
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 50051
    assert settings.tls.cert_file == DEV_DIR / "server.crt"
    assert settings.tls.key_file == DEV_DIR / "server.key"
    assert settings.tls.client_ca_file == DEV_DIR / "ca.crt"
    (issuer,) = settings.auth.issuers
    assert issuer.issuer == DEV_ISSUER
    assert issuer.audiences == (DEV_AUDIENCE,)
    assert issuer.public_key_files == (DEV_DIR / "token-signing.pub",)
    assert "HS256" not in issuer.algorithms
    assert settings.auth.token_types == ("at+jwt",)
    assert settings.models[0].id == "tiny-sd-test"
    assert settings.models[0].source is None
    assert settings.models[0].is_test_model is True


def test_defaults_equal_empty_file(tmp_path: Path) -> None:
    """An empty config file means the same as no file."""
    assert load_settings(_write(tmp_path, "")) == load_settings()


# --- reading TOML --------------------------------------------------------------------------


def test_toml_file_read(tmp_path: Path) -> None:
    """Values in a TOML file override the defaults, nested sections included."""
    path = _write(
        tmp_path,
        'host = "0.0.0.0"\nport = 6000\nmax_images_per_request = 2\n'
        '[tls]\ncert_file = "/etc/pixelgate/tls.crt"\n'
        "[rate_limit]\nrequests_per_minute = 120\nburst = 5\n"
        '[[models]]\nid = "sd-1.5"\nsource = "/models/sd15"\nmin_size = 256\n'
        "default_width = 512\ndefault_height = 512\nmax_steps = 80\nis_test_model = false\n"
        + ISSUER_TOML
        + 'algorithms = ["RS256"]\n',
    )
    settings = load_settings(path)
    assert isinstance(settings, Settings)
    assert (settings.host, settings.port, settings.max_images_per_request) == ("0.0.0.0", 6000, 2)
    assert settings.tls.cert_file == Path("/etc/pixelgate/tls.crt")
    assert settings.tls.key_file == DEV_DIR / "server.key"  # unset fields keep their default
    assert (settings.rate_limit.requests_per_minute, settings.rate_limit.burst) == (120, 5)
    assert settings.models[0].id == "sd-1.5"
    assert settings.models[0].source == "/models/sd15"
    assert (settings.models[0].min_size, settings.models[0].default_width) == (256, 512)
    assert settings.models[0].is_test_model is False
    (issuer,) = settings.auth.issuers
    assert issuer.issuer == "https://login.example.com"
    assert issuer.audiences == ("pixelgate-prod",)
    assert issuer.public_key_files == (Path("keys/issuer.pub"),)
    assert issuer.algorithms == ("RS256",)


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    """Command-line overrides beat the file; an override of None leaves the file's value."""
    path = _write(tmp_path, 'host = "10.0.0.1"\nport = 6000\n')
    settings = load_settings(path, host=None, port=7000)
    assert (settings.host, settings.port) == ("10.0.0.1", 7000)


# --- unknown keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("prot = 6000\n", "prot"),
        ('[tls]\ncert_fle = "x.crt"\n', "tls.cert_fle"),
        ("[rate_limit]\nrequests_per_second = 5\n", "rate_limit.requests_per_second"),
        (ISSUER_TOML + "verify_signature = false\n", "auth.issuers.0.verify_signature"),
    ],
)
def test_unknown_keys_refused(tmp_path: Path, text: str, where: str) -> None:
    """A misspelt or unknown key is an error naming it, never silently ignored."""
    message = _config_error(tmp_path, text)
    assert message.startswith("invalid configuration: ")
    assert where in message


# --- invalid values ------------------------------------------------------------------------


def test_port_out_of_range_refused(tmp_path: Path) -> None:
    """Port 70000 is refused with the field and its bound."""
    message = _config_error(tmp_path, "port = 70000\n")
    assert "port" in message
    assert "65535" in message


def test_width_not_multiple_of_8_refused(tmp_path: Path) -> None:
    """A model size that is not a multiple of 8 is refused, naming the field."""
    message = _config_error(tmp_path, "[[models]]\ndefault_width = 100\n")
    assert "default_width must be a multiple of 8" in message
    assert "model" in message


def test_default_steps_above_max_refused(tmp_path: Path) -> None:
    """default_steps greater than max_steps is refused."""
    message = _config_error(tmp_path, "[[models]]\ndefault_steps = 50\nmax_steps = 20\n")
    assert "default_steps must not exceed max_steps" in message


def test_default_width_outside_bounds_refused(tmp_path: Path) -> None:
    """A default size outside min_size..max size is refused."""
    message = _config_error(tmp_path, "[[models]]\ndefault_width = 1024\n")
    assert "default_width must lie within min_size..max_width" in message


def test_none_algorithm_refused(tmp_path: Path) -> None:
    """`none` can never be configured as a token algorithm."""
    message = _config_error(tmp_path, ISSUER_TOML + 'algorithms = ["none"]\n')
    assert "auth.issuers.0.algorithms.0" in message
    assert "ES256" in message  # says which values are allowed


def test_hs256_needs_a_secret_and_stands_alone(tmp_path: Path) -> None:
    """HS256 only with a secret file, and never mixed with public-key algorithms."""
    message = _config_error(tmp_path, ISSUER_TOML + 'algorithms = ["HS256"]\n')
    assert "HS256 needs hmac_secret_file" in message
    assert "at least 1 item" not in message  # no noise about the list the bad issuer left
    mixed = """
[[auth.issuers]]
issuer = "https://login.example.com"
audiences = ["pixelgate-prod"]
hmac_secret_file = "secret"
algorithms = ["HS256", "ES256"]
"""
    assert "cannot be mixed" in _config_error(tmp_path, mixed)
    alone = mixed.replace('["HS256", "ES256"]', '["HS256"]')
    path = tmp_path / "ok.toml"
    path.write_text(alone, encoding="utf-8")
    assert load_settings(path).auth.issuers[0].algorithms == ("HS256",)


def test_an_issuer_has_exactly_one_key_source(tmp_path: Path) -> None:
    """Two key sources (or none) for one issuer is refused, naming them."""
    message = _config_error(tmp_path, ISSUER_TOML + 'jwks_url = "https://login.example.com/jwks"\n')
    assert "exactly one key source" in message
    assert "public_key_files, jwks_url" in message


@pytest.mark.parametrize("url", ["http://login.example.com/jwks", "ftp://login.example.com/jwks"])
def test_jwks_is_fetched_over_https_only(tmp_path: Path, url: str) -> None:
    """Plain http (or anything else) for keys is refused, except to loopback."""
    text = ISSUER_TOML.replace('public_key_files = ["keys/issuer.pub"]', f'jwks_url = "{url}"')
    assert "jwks_url must be https://" in _config_error(tmp_path, text)
    loopback = ISSUER_TOML.replace(
        'public_key_files = ["keys/issuer.pub"]', 'jwks_url = "http://127.0.0.1:8080/jwks"'
    )
    path = tmp_path / "ok.toml"
    path.write_text(loopback, encoding="utf-8")
    assert load_settings(path).auth.issuers[0].jwks_url == "http://127.0.0.1:8080/jwks"


def test_policy_rules_are_validated(tmp_path: Path) -> None:
    """A rule whose match names two conditions is refused with the rule's position."""
    text = """
[[policy.rules]]
name = "free"
match = { scope = "tier:free", client_id = "x" }
max_steps = 10
"""
    message = _config_error(tmp_path, text)
    assert "policy.rules.0.match" in message
    assert "exactly one of" in message


def test_empty_audiences_refused(tmp_path: Path) -> None:
    """An issuer with no audiences (which would accept any token) is refused."""
    text = ISSUER_TOML.replace('["pixelgate-prod"]', "[]")
    message = _config_error(tmp_path, text)
    assert "auth.issuers.0.audiences" in message
    assert "at least 1" in message


def test_empty_issuer_list_refused(tmp_path: Path) -> None:
    """An empty issuer list is refused rather than meaning 'trust nothing' or 'anything'."""
    message = _config_error(tmp_path, "[auth]\nissuers = []\n")
    assert "auth.issuers" in message


def test_several_problems_reported_together(tmp_path: Path) -> None:
    """All invalid values are listed in one ConfigError."""
    message = _config_error(tmp_path, "port = 70000\nmax_images_per_request = 0\n")
    assert "port" in message
    assert "max_images_per_request" in message


# --- unreadable files ----------------------------------------------------------------------


def test_missing_file_refused(tmp_path: Path) -> None:
    """A config path that does not exist gives a ConfigError naming it."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="cannot read config file") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


def test_directory_as_file_refused(tmp_path: Path) -> None:
    """A directory given as the config file gives a ConfigError."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path)


@pytest.mark.parametrize("text", ["port = \n", "[tls\n", "port = 1\nport = 2\n", "host = 'a"])
def test_invalid_toml_refused(tmp_path: Path, text: str) -> None:
    """A file that is not valid TOML gives a ConfigError naming the file."""
    message = _config_error(tmp_path, text)
    assert "is not valid TOML" in message
    assert "pixelgate.toml" in message


def test_non_utf8_file_refused(tmp_path: Path) -> None:
    """A config file that is not UTF-8 (so not TOML) gives a ConfigError, not a traceback."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('host = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError):
        load_settings(path)


def test_model_ids_are_unique_and_the_default_exists(tmp_path: Path) -> None:
    """Two models with one id, or a default_model that is not configured, are refused."""
    twice = '[[models]]\nid = "a"\n[[models]]\nid = "a"\n'
    assert "model ids must be unique (repeated: a)" in _config_error(tmp_path, twice)
    unknown = 'default_model = "b"\n[[models]]\nid = "a"\n'
    assert "default_model 'b' is not among the models" in _config_error(tmp_path, unknown)


def test_the_first_model_is_the_default_unless_named(tmp_path: Path) -> None:
    """With several models the first one serves empty requests, unless default_model says."""
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nid = "a"\n[[models]]\nid = "b"\n', encoding="utf-8")
    assert load_settings(path).default_model_id == "a"
    path.write_text('default_model = "b"\n[[models]]\nid = "a"\n[[models]]\nid = "b"\n')
    assert load_settings(path).default_model_id == "b"


def test_engine_devices_are_checked(tmp_path: Path) -> None:
    """An unknown device name, or "auto" mixed with others, is refused."""
    assert "unknown device 'tpu'" in _config_error(tmp_path, '[engine]\ndevices = ["tpu"]\n')
    mixed = '[engine]\ndevices = ["auto", "cpu"]\n'
    assert '"auto" stands alone' in _config_error(tmp_path, mixed)


def test_connections_have_safe_finite_defaults() -> None:
    """With no [connections] section every connection is still bounded: a handshake within
    grpc's own 120 s default, idle and age limits, pings answered, a stream cap."""
    connections = load_settings().connections
    assert 0 < connections.handshake_timeout_seconds < 120
    assert 0 < connections.keepalive_timeout_seconds < connections.keepalive_time_seconds
    assert 0 < connections.max_idle_seconds < connections.max_age_seconds
    assert 0 < connections.max_age_grace_seconds < connections.max_age_seconds
    assert 1 <= connections.max_concurrent_streams <= 1000
    assert connections.keepalive_without_calls is False


def test_connections_are_read_and_checked(tmp_path: Path) -> None:
    """[connections] values come from the file; a zero timeout, no streams at all or an
    unknown key is refused, naming the field."""
    path = _write(tmp_path, "[connections]\nhandshake_timeout_seconds = 3\nmax_idle_seconds = 60\n")
    connections = load_settings(path).connections
    assert (connections.handshake_timeout_seconds, connections.max_idle_seconds) == (3, 60)
    zero = "[connections]\nhandshake_timeout_seconds = 0\n"
    assert "connections.handshake_timeout_seconds" in _config_error(tmp_path, zero)
    no_streams = "[connections]\nmax_concurrent_streams = 0\n"
    assert "connections.max_concurrent_streams" in _config_error(tmp_path, no_streams)
    unknown = "[connections]\nidle_timeout = 5\n"
    assert "connections.idle_timeout" in _config_error(tmp_path, unknown)


def test_the_redis_probe_interval_is_positive(tmp_path: Path) -> None:
    """The health probe's interval is read from [rate_limit]; zero is refused."""
    path = _write(tmp_path, "[rate_limit]\nredis_probe_interval_seconds = 5\n")
    assert load_settings(path).rate_limit.redis_probe_interval_seconds == 5
    zero = "[rate_limit]\nredis_probe_interval_seconds = 0\n"
    assert "rate_limit.redis_probe_interval_seconds" in _config_error(tmp_path, zero)


# --- environment variables -----------------------------------------------------------------


def _env_error(environ: dict[str, str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=environ)
    return str(caught.value)


def test_environment_sets_scalars_and_nested_fields() -> None:
    """PIXELGATE_ variables set top-level and nested settings, converted as TOML values are."""
    settings = load_settings(
        environ={
            "PIXELGATE_HOST": "0.0.0.0",
            "PIXELGATE_PORT": "8443",
            "PIXELGATE_RATE_LIMIT__BURST": "20",
            "PIXELGATE_TLS__CERT_FILE": "/etc/pixelgate/tls/tls.crt",
            "PIXELGATE_AUTH__REQUIRE_BOUND_TOKENS": "true",
            "PIXELGATE_PROBES__ADDRESS": "0.0.0.0:8081",
        }
    )
    assert (settings.host, settings.port) == ("0.0.0.0", 8443)
    assert settings.rate_limit.burst == 20
    assert settings.tls.cert_file == Path("/etc/pixelgate/tls/tls.crt")
    assert settings.tls.key_file == DEV_DIR / "server.key"  # untouched fields keep defaults
    assert settings.auth.require_bound_tokens is True
    assert settings.probes.address == "0.0.0.0:8081"


def test_environment_takes_lists_and_sections_as_json() -> None:
    """Lists and whole sections are JSON: devices, a model registry, an issuer list."""
    settings = load_settings(
        environ={
            "PIXELGATE_ENGINE__DEVICES": '["cuda:0", "cuda:1"]',
            "PIXELGATE_MODELS": '[{"id": "sd15", "source": "/models/sd15", "max_width": 768}]',
            "PIXELGATE_AUTH__ISSUERS": (
                '[{"issuer": "https://login.example.com", "audiences": ["pixelgate"],'
                ' "jwks_url": "https://login.example.com/jwks"}]'
            ),
        }
    )
    assert settings.engine.devices == ("cuda:0", "cuda:1")
    assert [(m.id, m.source, m.max_width) for m in settings.models] == [
        ("sd15", "/models/sd15", 768)
    ]
    assert settings.auth.issuers[0].jwks_url == "https://login.example.com/jwks"
    assert "PIXELGATE_ENGINE__DEVICES: expected JSON" in _env_error(
        {"PIXELGATE_ENGINE__DEVICES": "cpu"}
    )


def test_precedence_is_file_then_environment_then_flags(tmp_path: Path) -> None:
    """The environment overrides the file field by field; flags override both."""
    path = _write(tmp_path, "port = 7000\n[rate_limit]\nburst = 5\nrequests_per_minute = 30\n")
    environ = {"PIXELGATE_PORT": "7001", "PIXELGATE_RATE_LIMIT__BURST": "9"}
    settings = load_settings(path, environ=environ)
    assert settings.port == 7001
    assert (settings.rate_limit.burst, settings.rate_limit.requests_per_minute) == (9, 30)
    assert load_settings(path, environ=environ, port=7002).port == 7002


def test_a_bad_value_names_the_setting_and_the_variable() -> None:
    """A value the file would refuse is refused the same way, naming both where it came from
    and which setting it is; the value itself is not echoed."""
    message = _env_error({"PIXELGATE_RATE_LIMIT__BURST": "many-many"})
    assert "rate_limit.burst (from PIXELGATE_RATE_LIMIT__BURST)" in message
    assert "many-many" not in message
    inside_a_list = _env_error({"PIXELGATE_MODELS": '[{"id": "a", "min_size": 7}]'})
    assert "models.0.min_size (from PIXELGATE_MODELS)" in inside_a_list


def test_an_unknown_variable_is_refused_like_an_unknown_key() -> None:
    """A misspelt PIXELGATE_ variable stops start-up rather than being ignored; the client
    CLI's own variables (PIXELGATE_TOKEN...) are not settings and are left alone."""
    assert "unknown setting rate_limt" in _env_error({"PIXELGATE_RATE_LIMT__BURST": "1"})
    assert "unknown setting tls.cert" in _env_error({"PIXELGATE_TLS__CERT": "/x"})
    assert "port is not a section" in _env_error({"PIXELGATE_PORT__NUMBER": "1"})
    clients = {"PIXELGATE_TOKEN": "t", "PIXELGATE_TARGET": "h:1", "PIXELGATE_CA": "ca.crt"}
    assert load_settings(environ={**clients, "HOME": "/root"}) == load_settings()


def test_no_environ_means_no_environment() -> None:
    """load_settings reads variables only when given them: the process's own are not read."""
    assert load_settings(environ={}) == load_settings()


def test_probe_address_is_host_and_port() -> None:
    """The probe listener is off by default; an address without a port is refused."""
    assert load_settings().probes.address is None
    assert "probes.address" in _env_error({"PIXELGATE_PROBES__ADDRESS": "8081"})
    ipv6 = load_settings(environ={"PIXELGATE_PROBES__ADDRESS": "[::]:8081"})
    assert ipv6.probes.address == "[::]:8081"
