"""The client's fleet target and service config: what gRPC is asked to resolve and retry."""

from __future__ import annotations

import json

import pytest

from pixelgate.client.service_config import ServiceConfig
from pixelgate.client.targets import address_list_host, channel_target, names_a_fleet


def test_an_address_list_becomes_an_ipv4_or_ipv6_target():
    """A comma-separated list of IP addresses is turned into gRPC's `ipv4:`/`ipv6:` form."""
    assert channel_target("10.0.0.1:5, 10.0.0.2:5") == "ipv4:10.0.0.1:5,10.0.0.2:5"
    assert channel_target("[::1]:5,[::2]:5") == "ipv6:[::1]:5,[::2]:5"


def test_single_addresses_and_uris_pass_through_unchanged():
    """One host:port, `dns:///...` and `ipv4:` lists are gRPC's own to resolve."""
    for target in ("localhost:50051", "dns:///pixelgate:50051", "ipv4:1.2.3.4:5,1.2.3.5:5"):
        assert channel_target(target) == target


@pytest.mark.parametrize(
    "target", ["a.example:5,b.example:5", "10.0.0.1:5,[::1]:5", "1.2.3.4,1.2.3.5"]
)
def test_a_list_of_names_mixed_families_or_missing_ports_is_refused(target):
    """Host names need `dns:///`, and every address needs a port; the error says so."""
    with pytest.raises(ValueError):
        channel_target(target)


def test_only_fleet_targets_are_health_checked_and_named_by_their_first_host():
    """`dns:` and lists name fleets; the certificate is checked against the first host."""
    assert names_a_fleet("dns:///pixelgate:50051")
    assert names_a_fleet("ipv4:10.0.0.1:5,10.0.0.2:5")
    assert not names_a_fleet("10.0.0.1:5")
    assert address_list_host("ipv4:10.0.0.1:5,10.0.0.2:5") == "10.0.0.1"
    assert address_list_host("ipv6:[::1]:5,[::2]:5") == "::1"
    assert address_list_host("dns:///pixelgate:50051") is None


def test_the_service_config_retries_only_unavailable():
    """round_robin, health checking, and a retry policy on UNAVAILABLE alone: a caller over
    its rate (RESOURCE_EXHAUSTED) is never retried by the channel."""
    config = json.loads(ServiceConfig(max_attempts=4).as_json())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": "pixelgate.v1.ImageService"}
    [method] = config["methodConfig"]
    assert method["retryPolicy"]["maxAttempts"] == 4
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_one_attempt_and_no_health_service_leave_those_parts_out():
    """max_attempts=1 means no retry policy; health_service=None no health checking."""
    config = json.loads(ServiceConfig(max_attempts=1, health_service=None).as_json())
    assert config == {"loadBalancingConfig": [{"round_robin": {}}]}
