"""Certificate and CA rotation without a restart: grpc's dynamic server credentials.

grpc asks `fetch` for the material before each new handshake; open connections
keep what they were set up with. Files are looked at (a stat, not a read) at
most once per `check_interval` seconds; `reload()` (SIGHUP) reads them at once.
A file set that fails to load keeps the material in service, logged and counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import grpc

from pixelgate.server.core.config import TlsSettings
from pixelgate.server.security.tls import TlsConfigError, TlsMaterial, load_tls_material

log = logging.getLogger(__name__)

FileSignature = tuple[tuple[int, int, int] | None, ...]
"""(inode, mtime in ns, size) of each file, through symlinks; None for one that is missing."""


def file_signature(tls: TlsSettings) -> FileSignature:
    """What changes when a file is rewritten or a Kubernetes `..data` symlink is swapped."""
    signature: list[tuple[int, int, int] | None] = []
    for path in (tls.cert_file, tls.key_file, tls.client_ca_file):
        try:
            stat = os.stat(path)  # follows symlinks: a swapped target is a new inode
        except OSError:
            signature.append(None)
        else:
            signature.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(signature)


class CertificateReloader:
    """Serves the TLS files `tls` names, re-read when they change and on `reload()`.

    Thread-safe: grpc calls `fetch` from its own threads, `reload` runs on the loop.
    """

    def __init__(
        self,
        tls: TlsSettings,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tls = tls
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._signature = file_signature(tls)
        self._material = load_tls_material(tls)  # a bad set at start is a config error
        self._next_check = clock() + check_interval
        self._pending: TlsMaterial | None = None
        self.rejected_reloads = 0
        """File sets refused since start (they did not load or the key did not match)."""

    @property
    def material(self) -> TlsMaterial:
        """The material new handshakes get."""
        return self._material

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that ask this reloader before each handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self._material.certificate_configuration(),
            self.fetch,  # type: ignore[arg-type]  # None means "keep", as grpc documents
            require_client_authentication=True,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's certificate configuration fetcher: new material, or None to keep the old."""
        try:
            with self._lock:
                now = self._clock()
                if now >= self._next_check:
                    self._next_check = now + self._check_interval
                    if file_signature(self._tls) != self._signature:
                        self._load()
                pending, self._pending = self._pending, None
            return pending.certificate_configuration() if pending else None
        except Exception:  # an exception here would fail the handshake: keep serving
            log.exception("certificate check failed; the certificate in service is kept")
            return None

    def reload(self) -> bool:
        """Reads the files now, changed or not (SIGHUP); True if the new set is in service."""
        with self._lock:
            return self._load()

    def _load(self) -> bool:
        # The signature is taken before reading: a write that lands mid-read shows up
        # as a change at the next check. A refused set is not retried until it changes.
        self._signature = file_signature(self._tls)
        try:
            material = load_tls_material(self._tls)
        except TlsConfigError as error:
            self.rejected_reloads += 1
            log.error("TLS files not reloaded, the certificate in service is kept: %s", error)
            return False
        self._material = self._pending = material
        log.info(
            "TLS files reloaded: certificate serial %x, valid until %s; %d client CA(s)",
            material.certificate.serial_number,
            material.certificate.not_valid_after_utc.isoformat(),
            len(material.client_cas),
        )
        return True


__all__ = ["CertificateReloader", "FileSignature", "file_signature"]
