"""SIGHUP makes the real `pixelgate-server` process re-read its TLS files at once."""

from __future__ import annotations

import signal
import socket
import ssl

from cryptography import x509

from pixelgate.dev.pki import Issued, issue_server_certificate, load_issued

START_TIMEOUT_S = 90
"""Importing torch/diffusers and loading the model takes ~10-15 s on a small CPU box."""


def _served_serial(port: int, pki) -> int:
    context = ssl.create_default_context(cafile=pki.ca_cert)
    context.load_cert_chain(pki.client_cert, pki.client_key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _write(issued: Issued, cert_file, key_file) -> None:
    cert_file.write_bytes(issued.certificate_pem)
    key_file.write_bytes(issued.key_pem)


def test_sighup_puts_renewed_files_in_service_and_the_server_goes_on(spawn, pki, tmp_path):
    """After SIGHUP the next handshake gets the renewed certificate; the process keeps running."""
    ca = load_issued(pki.ca_cert, pki.ca_key)
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    first = issue_server_certificate(ca)
    _write(first, cert_file, key_file)
    server = spawn(tls={"cert_file": cert_file, "key_file": key_file})
    port = server.wait_serving(START_TIMEOUT_S)
    assert _served_serial(port, pki) == first.certificate.serial_number

    renewed = issue_server_certificate(ca)
    _write(renewed, cert_file, key_file)
    server.signal(signal.SIGHUP)
    server.wait_for(server.stderr, "TLS files reloaded", timeout=10)
    assert _served_serial(port, pki) == renewed.certificate.serial_number
    assert server.alive()
