"""Prometheus' own tool on our monitoring files and on a real scrape: the rules load, the
scrape passes its lint, and every metric the rules and the dashboard name is exported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ServerUnderTest

from pixelgate.client import InvalidArgument, PixelgateClient

pytestmark = pytest.mark.timeout(90)

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "pixelgate-rules.yaml"
RULE_TESTS = MONITORING / "pixelgate-rules.test.yaml"
DASHBOARD = MONITORING / "pixelgate-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; CI installs it)"
)
METRIC_NAME = re.compile(r"\b((?:pixelgate|grpc_server)_[a-z0-9_]+)")
SERIES_SUFFIXES = ("_bucket", "_count", "_sum")
ONLY_WHERE_THEY_APPLY = {
    "pixelgate_device_memory_used_bytes",  # CUDA devices only (tests/unit/metrics)
    "pixelgate_jwks_refreshes_total",  # fetched JWKS only (tests/integration/test_metrics.py)
}


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def scrape(
    start_server: Callable[..., ServerUnderTest], connect: Callable[..., PixelgateClient]
) -> str:
    """A scrape of a server that generated an image and refused a call."""
    server = start_server(metrics={"enabled": True, "address": "127.0.0.1:0"})
    client = connect(server)
    client.list_models()
    client.generate("a lighthouse", steps=2)
    with pytest.raises(InvalidArgument):
        client.generate("a lighthouse", width=7)
    url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode("utf-8"))


@needs_promtool
def test_the_alert_rules_load_in_prometheus() -> None:
    """`promtool check rules` accepts every rule (syntax, PromQL, templates)."""
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_each_alert_fires_on_the_series_that_should_raise_it() -> None:
    """`promtool test rules`: queue saturation, refusal spike, certificate expiry and a model
    not ready fire on synthetic series, and healthy series raise nothing."""
    tested = _promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_a_real_scrape_passes_promtools_lint(scrape: str) -> None:
    """`promtool check metrics` finds nothing wrong with what /metrics serves."""
    checked = _promtool("check", "metrics", stdin=scrape)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stderr


def test_every_metric_the_rules_and_dashboard_use_is_exported(scrape: str) -> None:
    """A renamed metric breaks this test, not an alert in production."""
    exported = {line.split()[2] for line in scrape.splitlines() if line.startswith("# TYPE ")}
    series = set(exported)
    for name in exported:
        series.update(name + suffix for suffix in (*SERIES_SUFFIXES, "_total"))
    texts = RULES.read_text(encoding="utf-8") + json.dumps(
        json.loads(DASHBOARD.read_text(encoding="utf-8"))
    )
    used = set(METRIC_NAME.findall(texts))
    assert used, "no metric found in the rules and dashboard"
    missing = used - series - ONLY_WHERE_THEY_APPLY
    assert not missing, f"not exported: {sorted(missing)}"
