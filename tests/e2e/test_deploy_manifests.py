"""deploy/kubernetes/ and the Dockerfile: valid against the Kubernetes API schemas, and
consistent with the settings the server really reads.

The container's settings are built as the container builds them: the image's ENV
lines, then the ConfigMap, through load_settings (so a misspelt variable fails here,
not in a crash-looping pod).
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_schemas

from pixelgate.server.core.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
OLDEST_KUBERNETES = "1.31"
"""The oldest API the manifests must be valid for (the preStop `sleep` action is on)."""

CUSTOM_RESOURCES: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = {
    # cert-manager's CRD is unknown to the Kubernetes schemas: its required fields instead.
    ("cert-manager.io/v1", "Certificate"): (
        ("metadata", "name"),
        ("spec", "secretName"),
        ("spec", "issuerRef", "name"),
    ),
}


def _resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    documents = []
    for name in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    return documents


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in _resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def _dig(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


def _image_environment() -> dict[str, str]:
    """The ENV of the Dockerfile's last stage, as `KEY=VALUE` pairs."""
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    last_stage = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    environment: dict[str, str] = {}
    for line in lines[last_stage:]:
        if line.startswith("ENV "):
            for pair in shlex.split(line[len("ENV ") :]):
                key, _, value = pair.partition("=")
                environment[key] = value
    return environment


def _container_settings() -> Settings:
    """The settings the pixelgate container starts with: image ENV, then the ConfigMap."""
    config_map = _one("ConfigMap", "pixelgate-config")["data"]
    return load_settings(None, environ={**_image_environment(), **config_map})


def _server_container() -> dict[str, Any]:
    (container,) = _one("Deployment", "pixelgate")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, "1.37"])
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    """Every built-in resource passes the strict schema (no unknown field, no wrong type);
    custom resources have their required fields."""
    resources = _resources()
    assert {r["kind"] for r in resources} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
        "Certificate",
    }
    for resource in resources:
        required = CUSTOM_RESOURCES.get((resource["apiVersion"], resource["kind"]))
        if required is not None:
            for path in required:
                assert _dig(resource, path), f"{resource['kind']} lacks {'.'.join(path)}"
            continue
        kubernetes_schemas.validate(resource, version, strict=True)


def test_the_container_environment_loads_as_settings() -> None:
    """Image ENV plus the ConfigMap are accepted by the server's own loader; every
    variable names a setting, and the probe listener is on."""
    settings = _container_settings()
    assert settings.probes.address is not None
    assert settings.rate_limit.backend == "redis"


def test_probes_and_ports_are_where_the_server_listens() -> None:
    """The container's ports, the gRPC probes, the scrape annotations and the Service point
    at the ports the settings bind; readiness asks for the service the server reports on."""
    settings = _container_settings()
    assert settings.probes.address is not None
    probe_port = int(settings.probes.address.rpartition(":")[2])
    container = _server_container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    metrics_port = int(settings.metrics.address.rpartition(":")[2])
    assert ports == {"grpc": settings.port, "probes": probe_port, "metrics": metrics_port}
    annotations = _one("Deployment", "pixelgate")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert not settings.metrics.address.startswith("127."), "a scraper must reach it"
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == probe_port
    assert container["readinessProbe"]["grpc"]["service"] == "pixelgate.v1.ImageService"
    assert container["livenessProbe"]["tcpSocket"]["port"] == "probes"
    (service_port,) = _one("Service", "pixelgate")["spec"]["ports"]
    assert service_port["targetPort"] == "grpc"
    assert _one("Service", "pixelgate")["spec"]["clusterIP"] == "None"


def test_tls_files_come_from_the_certificate_secret() -> None:
    """The TLS files the settings name lie in the volume of the Secret cert-manager writes."""
    settings = _container_settings()
    container = _server_container()
    pod = _one("Deployment", "pixelgate")["spec"]["template"]["spec"]
    (tls_mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    (tls_volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    secret = _one("Certificate", "pixelgate-server")["spec"]["secretName"]
    assert tls_volume["secret"]["secretName"] == secret
    for path in (settings.tls.cert_file, settings.tls.key_file, settings.tls.client_ca_file):
        assert PurePosixPath(path).parent == PurePosixPath(tls_mount["mountPath"])


def test_read_only_root_leaves_the_server_what_it_needs() -> None:
    """The root filesystem is read-only and non-root; the baked model cache is not hidden
    by a mount, and the scratch directory the image's HOME points at is writable."""
    settings = _container_settings()
    container = _server_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    pod = _one("Deployment", "pixelgate")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]]
    cache = PurePosixPath(settings.cache_dir)
    assert not any(cache.is_relative_to(mount) for mount in mounts)
    home = PurePosixPath(_image_environment()["HOME"])
    (scratch,) = [m for m in container["volumeMounts"] if m["name"] == "tmp"]
    assert home.is_relative_to(scratch["mountPath"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_drain_fits_in_the_termination_grace_period() -> None:
    """preStop's sleep plus the server's shutdown grace end before the kubelet's SIGKILL."""
    settings = _container_settings()
    pod = _one("Deployment", "pixelgate")["spec"]["template"]["spec"]
    sleep = _server_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep + settings.shutdown_grace_seconds < pod["terminationGracePeriodSeconds"]


def test_the_redis_url_names_the_redis_service() -> None:
    """Shared limits reach the Redis Service the manifests create, on its port."""
    url = urlsplit(_container_settings().rate_limit.redis_url)
    (port,) = _one("Service", "pixelgate-redis")["spec"]["ports"]
    assert (url.hostname, url.port) == ("pixelgate-redis", port["port"])
