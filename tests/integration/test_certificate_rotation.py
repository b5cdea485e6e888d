"""Certificates and CAs rotate live, over real mutual TLS, without a restart.

The server's files sit behind a Kubernetes-style `..data` symlink, swapped the way
a Secret update swaps it. New handshakes get the new material; open channels go
on; a file set that does not load keeps the old material in service.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import ServerUnderTest, wait_for

from pixelgate.client import PixelgateClient
from pixelgate.dev.pki import (
    Issued,
    issue_client_certificate,
    issue_server_certificate,
    load_issued,
    make_ca,
)

TIMEOUT = 5.0
NEW_CLIENT_ID = "spiffe://pixelgate.invalid/client/rotated"

pytestmark = pytest.mark.timeout(60)


@dataclass
class SecretVolume:
    """A directory laid out as Kubernetes mounts a Secret: `name -> ..data/name`."""

    root: Path
    versions: int = 0

    def publish(self, files: dict[str, bytes]) -> None:
        """Writes a new version and swaps `..data` to it in one rename, as the kubelet does."""
        self.versions += 1
        version = self.root / f"..version-{self.versions}"
        version.mkdir()
        for name, data in files.items():
            (version / name).write_bytes(data)
        staging = self.root / "..data_tmp"
        staging.symlink_to(version.name)
        os.replace(staging, self.root / "..data")
        for name in files:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(Path("..data") / name)

    def path(self, name: str) -> Path:
        """The stable path a setting names."""
        return self.root / name


@dataclass
class Rotation:
    """A server serving from a Secret volume, and the CA behind its certificates."""

    server: ServerUnderTest
    volume: SecretVolume
    ca: Issued
    client: Issued

    def publish(self, server_certificate: Issued, client_ca: bytes | None = None) -> None:
        """Publishes a new file set (the client CA unchanged unless given)."""
        self.volume.publish(
            {
                "tls.crt": server_certificate.certificate_pem,
                "tls.key": server_certificate.key_pem,
                "ca.crt": client_ca or self.ca.certificate_pem,
            }
        )

    @property
    def rejected(self) -> int:
        """The server's count of refused file sets."""
        certificates = self.server.running.certificates
        assert certificates is not None
        return certificates.rejected_reloads


def _write(directory: Path, name: str, issued: Issued) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(issued.certificate_pem)
    key_file.write_bytes(issued.key_pem)
    return cert_file, key_file


def served_serial(target: str, ca: Issued, client: Issued, tmp_path: Path) -> int:
    """Makes a new TLS handshake and returns the serial number of the certificate served."""
    cert_file, key_file = _write(tmp_path / "probe", "probe", client)
    context = ssl.create_default_context(cadata=ca.certificate_pem.decode())
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    host, port = target.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def health_over_new_channel(target: str, server_ca: Issued, client: Issued) -> str:
    """Health through a new channel (a new handshake) with `client`'s certificate."""
    credentials = grpc.ssl_channel_credentials(
        server_ca.certificate_pem, client.key_pem, client.certificate_pem
    )
    with grpc.secure_channel(target, credentials) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


@pytest.fixture
def rotation(start_server: Callable[..., ServerUnderTest], tmp_path: Path) -> Rotation:
    """A server whose certificate, key and client CA come from a Secret-style volume."""
    ca = make_ca("rotation CA")
    volume = SecretVolume(tmp_path / "secret")
    volume.root.mkdir()
    first = issue_server_certificate(ca)
    volume.publish(
        {"tls.crt": first.certificate_pem, "tls.key": first.key_pem, "ca.crt": ca.certificate_pem}
    )
    server = start_server(
        tls={
            "cert_file": volume.path("tls.crt"),
            "key_file": volume.path("tls.key"),
            "client_ca_file": volume.path("ca.crt"),
        }
    )
    return Rotation(server, volume, ca, issue_client_certificate(ca))


def test_a_new_server_certificate_reaches_new_handshakes_and_open_channels_go_on(
    rotation, tmp_path
):
    """After a Secret update, new handshakes get the new certificate; an open channel works on."""
    target = rotation.server.target
    before = served_serial(target, rotation.ca, rotation.client, tmp_path)
    cert_file, key_file = _write(tmp_path / "client", "client", rotation.client)
    ca_file = tmp_path / "client" / "ca.crt"
    ca_file.write_bytes(rotation.ca.certificate_pem)
    open_client = PixelgateClient(target, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    with open_client:
        assert open_client.health() == "SERVING"
        renewed = issue_server_certificate(rotation.ca)
        rotation.publish(renewed)
        new_serial = renewed.certificate.serial_number
        assert new_serial != before
        wait_for(
            lambda: served_serial(target, rotation.ca, rotation.client, tmp_path) == new_serial,
            TIMEOUT,
            "the renewed certificate served",
        )
        assert open_client.health() == "SERVING"
    assert rotation.rejected == 0


def test_a_new_client_ca_refuses_clients_of_the_old_one_and_admits_clients_of_the_new(rotation):
    """Once the client CA is rotated, an old CA's client fails its handshake, a new one's passes."""
    target = rotation.server.target
    new_ca = make_ca("next rotation CA")
    new_client = issue_client_certificate(new_ca)
    assert health_over_new_channel(target, rotation.ca, rotation.client) == "SERVING"
    with pytest.raises(grpc.RpcError):
        health_over_new_channel(target, rotation.ca, new_client)

    rotation.publish(issue_server_certificate(rotation.ca), client_ca=new_ca.certificate_pem)

    def old_client_refused() -> bool:
        try:
            health_over_new_channel(target, rotation.ca, rotation.client)
        except grpc.RpcError as error:
            return error.code() == grpc.StatusCode.UNAVAILABLE
        return False

    wait_for(old_client_refused, TIMEOUT, "the old CA's client refused")
    assert health_over_new_channel(target, rotation.ca, new_client) == "SERVING"


@pytest.mark.parametrize("spoil", ["garbage certificate", "key of another certificate"])
def test_a_file_set_that_does_not_load_keeps_the_old_material_logged_and_counted(
    rotation, tmp_path, caplog, spoil
):
    """A garbage PEM or a key that is not the certificate's: the old certificate is still
    served, new clients still get in, the refusal is counted and logged without the key."""
    target = rotation.server.target
    before = served_serial(target, rotation.ca, rotation.client, tmp_path)
    renewed = issue_server_certificate(rotation.ca)
    other = issue_server_certificate(rotation.ca)
    files = {
        "garbage certificate": {
            "tls.crt": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            "tls.key": renewed.key_pem,
        },
        "key of another certificate": {
            "tls.crt": renewed.certificate_pem,
            "tls.key": other.key_pem,
        },
    }[spoil]
    with caplog.at_level(logging.ERROR, logger="pixelgate.server.security"):
        rotation.volume.publish({**files, "ca.crt": rotation.ca.certificate_pem})
        wait_for(
            lambda: (
                served_serial(target, rotation.ca, rotation.client, tmp_path)
                and rotation.rejected == 1
            ),
            TIMEOUT,
            "the spoiled file set refused",
        )
    assert served_serial(target, rotation.ca, rotation.client, tmp_path) == before
    assert health_over_new_channel(target, rotation.ca, rotation.client) == "SERVING"
    refusals = [r for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(refusals) == 1
    assert b"PRIVATE KEY" not in refusals[0].getMessage().encode()
    # Fixed files are picked up again: a refusal is not sticky.
    rotation.publish(renewed)
    wait_for(
        lambda: (
            served_serial(target, rotation.ca, rotation.client, tmp_path)
            == renewed.certificate.serial_number
        ),
        TIMEOUT,
        "the fixed file set served",
    )
    assert rotation.rejected == 1


def test_reload_reads_the_files_at_once(rotation, tmp_path):
    """`reload()` (what SIGHUP calls) puts new files in service for the very next handshake."""
    certificates = rotation.server.running.certificates
    assert certificates is not None
    renewed = issue_server_certificate(rotation.ca)
    rotation.publish(renewed)
    assert certificates.reload() is True
    served = served_serial(rotation.server.target, rotation.ca, rotation.client, tmp_path)
    assert served == renewed.certificate.serial_number
    assert certificates.material.certificate.serial_number == renewed.certificate.serial_number


def test_reload_of_a_bad_file_set_keeps_the_old_one(rotation, tmp_path):
    """`reload()` of files that do not load answers False and changes nothing served."""
    certificates = rotation.server.running.certificates
    assert certificates is not None
    before = served_serial(rotation.server.target, rotation.ca, rotation.client, tmp_path)
    rotation.volume.publish(
        {"tls.crt": b"garbage", "tls.key": b"garbage", "ca.crt": rotation.ca.certificate_pem}
    )
    assert certificates.reload() is False
    assert rotation.rejected == 1
    assert served_serial(rotation.server.target, rotation.ca, rotation.client, tmp_path) == before


def test_the_client_library_rotates_its_own_certificate(server, pki, mint, tmp_path):
    """A long-lived client picks up its renewed certificate: the server sees the new identity,
    and a stream opened before the renewal runs to its end."""
    ca = load_issued(pki.ca_cert, pki.ca_key)
    volume = SecretVolume(tmp_path / "client-secret")
    volume.root.mkdir()
    first = issue_client_certificate(ca)
    volume.publish({"tls.crt": first.certificate_pem, "tls.key": first.key_pem})
    client = PixelgateClient(
        server.target,
        ca_file=pki.ca_cert,
        cert_file=volume.path("tls.crt"),
        key_file=volume.path("tls.key"),
        token=mint(),
        tls_check_interval=0,
    )
    with client:
        client.list_models()
        stream = client.stream("a lighthouse", steps=2, width=64, height=64)
        next(stream)  # the call is open on the first channel
        renewed = issue_client_certificate(ca, NEW_CLIENT_ID)
        volume.publish({"tls.crt": renewed.certificate_pem, "tls.key": renewed.key_pem})
        client.list_models()
        assert [event for event in stream]  # the open stream finishes on the old channel
    entries = server.audit_entries(3)
    before, after = [e for e in entries if e["method"].endswith("/ListModels")]
    [stream_entry] = [e for e in entries if e["method"].endswith("/GenerateImage")]
    assert before["principal"]["certificate"] == "spiffe://pixelgate.invalid/client/dev"
    assert after["principal"]["certificate"] == NEW_CLIENT_ID
    assert after["peer"] != before["peer"]  # a new connection, for the new certificate
    assert stream_entry["peer"] == before["peer"]  # the stream kept its connection
    assert stream_entry["status"] == "OK"


def test_the_client_library_keeps_its_channel_when_new_files_do_not_load(
    server, pki, mint, tmp_path
):
    """A client whose renewed key is not its certificate's keeps calling with the old pair."""
    volume = SecretVolume(tmp_path / "client-secret")
    volume.root.mkdir()
    dev_certificate = pki.client_cert.read_bytes()
    volume.publish({"tls.crt": dev_certificate, "tls.key": pki.client_key.read_bytes()})
    client = PixelgateClient(
        server.target,
        ca_file=pki.ca_cert,
        cert_file=volume.path("tls.crt"),
        key_file=volume.path("tls.key"),
        token=mint(),
        tls_check_interval=0,
    )
    with client:
        assert client.list_models()
        stranger = issue_client_certificate(make_ca("unrelated"))
        volume.publish({"tls.crt": dev_certificate, "tls.key": stranger.key_pem})
        assert client.list_models()
        assert client.rejected_tls_rotations == 1
        assert client.list_models()  # refused once, not re-read on every call
        assert client.rejected_tls_rotations == 1
