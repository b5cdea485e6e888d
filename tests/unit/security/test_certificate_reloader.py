"""The certificate reloader: what grpc's handshakes get as the TLS files change.

grpc asks `fetch()` before every handshake: None keeps the material in service,
a configuration replaces it. A fake clock stands in for time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelgate.dev.pki import Issued, issue_server_certificate, make_ca
from pixelgate.server.core.config import TlsSettings
from pixelgate.server.security.certificate_reloader import CertificateReloader
from pixelgate.server.security.tls import TlsConfigError

CA = make_ca("unit CA")


class FakeClock:
    """Monotonic seconds a test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _settings(tmp_path: Path, issued: Issued, key_pem: bytes | None = None) -> TlsSettings:
    (tmp_path / "tls.crt").write_bytes(issued.certificate_pem)
    (tmp_path / "tls.key").write_bytes(key_pem or issued.key_pem)
    (tmp_path / "ca.crt").write_bytes(CA.certificate_pem)
    return TlsSettings(
        cert_file=tmp_path / "tls.crt",
        key_file=tmp_path / "tls.key",
        client_ca_file=tmp_path / "ca.crt",
    )


def _serial(reloader: CertificateReloader) -> int:
    return reloader.material.certificate.serial_number


def test_changed_files_are_served_after_the_check_interval_and_only_once(tmp_path):
    """Between checks the files are not looked at; after one, the new set is handed to grpc once."""
    clock = FakeClock()
    reloader = CertificateReloader(
        _settings(tmp_path, issue_server_certificate(CA)), check_interval=1.0, clock=clock
    )
    renewed = issue_server_certificate(CA)
    _settings(tmp_path, renewed)
    clock.now += 0.5
    assert reloader.fetch() is None
    clock.now += 0.5
    assert reloader.fetch() is not None
    assert _serial(reloader) == renewed.certificate.serial_number
    clock.now += 5
    assert reloader.fetch() is None  # nothing changed since


def test_reload_reads_the_files_within_the_check_interval(tmp_path):
    """`reload()` (SIGHUP) does not wait for the next check: the next handshake gets the files."""
    clock = FakeClock()
    reloader = CertificateReloader(
        _settings(tmp_path, issue_server_certificate(CA)), check_interval=60.0, clock=clock
    )
    renewed = issue_server_certificate(CA)
    _settings(tmp_path, renewed)
    assert reloader.fetch() is None
    assert reloader.reload() is True
    assert reloader.fetch() is not None
    assert _serial(reloader) == renewed.certificate.serial_number


def test_a_mismatched_key_is_refused_counted_once_and_the_old_set_kept(tmp_path, caplog):
    """A key that is not the certificate's: the old material stays, one refusal is counted and
    logged (without the key), and the same files are not re-read at every check."""
    clock = FakeClock()
    first = issue_server_certificate(CA)
    reloader = CertificateReloader(_settings(tmp_path, first), check_interval=1.0, clock=clock)
    stranger = issue_server_certificate(CA)
    _settings(tmp_path, issue_server_certificate(CA), key_pem=stranger.key_pem)
    for _ in range(3):
        clock.now += 1
        assert reloader.fetch() is None
    assert reloader.rejected_reloads == 1
    assert _serial(reloader) == first.certificate.serial_number
    [record] = [r for r in caplog.records if "not reloaded" in r.getMessage()]
    assert "does not match" in record.getMessage()
    assert "PRIVATE KEY" not in record.getMessage()


def test_a_file_set_that_does_not_load_at_start_is_a_configuration_error(tmp_path):
    """At start there is nothing to fall back on: a bad set stops the server with a clear error."""
    settings = _settings(tmp_path, issue_server_certificate(CA))
    settings.cert_file.write_bytes(b"not a certificate")
    with pytest.raises(TlsConfigError, match="holds no PEM certificate"):
        CertificateReloader(settings)
