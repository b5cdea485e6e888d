"""Channel targets that name several replicas.

gRPC resolves `dns:///name:port` (every A/AAAA record: a Kubernetes headless
Service) and `ipv4:a:port,b:port` itself; a plain comma-separated list of
IP addresses is turned into the latter here.
"""

from __future__ import annotations

import ipaddress

_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


def channel_target(target: str) -> str:
    """`target` as gRPC takes it: a list "10.0.0.1:5,10.0.0.2:5" becomes "ipv4:10.0.0.1:5,...".

    Raises ValueError for a list that mixes families or names hosts: use
    `dns:///name:port` for names.
    """
    if "," not in target or target.startswith(_SCHEMES):
        return target  # one address, or already a URI gRPC resolves itself
    addresses = [part.strip() for part in target.split(",") if part.strip()]
    families = {_family(address) for address in addresses}
    if len(families) != 1:
        raise ValueError(f"cannot mix address families in the target {target!r}")
    return f"{families.pop()}:{','.join(addresses)}"


def names_a_fleet(target: str) -> bool:
    """True for a target that may resolve to several replicas: `dns:` or an address list.

    A plain host:port names one server, which callers reach even when its health
    says NOT_SERVING (to list its models while they load, or to read its health).
    """
    return target.startswith("dns:") or "," in target


def address_list_host(target: str) -> str | None:
    """The host of the first address of an `ipv4:`/`ipv6:` list, else None.

    gRPC would check the server certificate against the whole list; replicas
    share one certificate, so the first host is the name to check.
    """
    scheme, _, addresses = target.partition(":")
    if scheme not in ("ipv4", "ipv6") or "," not in addresses:
        return None
    host = addresses.split(",")[0].rpartition(":")[0]
    return host.removeprefix("[").removesuffix("]")


def _family(address: str) -> str:
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"{address!r} in the target has no port")
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IP address: name several replicas as dns:///name:port"
        ) from None
    return "ipv4" if ip.version == 4 else "ipv6"


__all__ = ["address_list_host", "channel_target", "names_a_fleet"]
