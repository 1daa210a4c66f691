"""Where an IP address is: a special range by name, or a country from offline RIR data.

Special ranges (private, loopback, documentation, ...) are named here from the RFCs rather
than taken from ``ipaddress.is_global``, whose answers changed between Python releases,
so a report says *why* an address is not foreign. Countries come from ``iptocc``, whose
wheel embeds the regional internet registries' delegation data: no network at run time.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata

import iptocc

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SPECIAL_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b::/96", "NAT64"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "IETF protocol assignments"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
)
_NETWORKS = tuple((ipaddress.ip_network(net), label) for net, label in _SPECIAL_NETWORKS)


@dataclass(frozen=True)
class Placement:
    """Either ``special`` names a non-routable range, or ``country`` is an ISO code (or None)."""

    special: str | None
    country: str | None


def special_range(address: IPAddress) -> str | None:
    """Name the special-purpose range holding ``address``, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return special_range(address.ipv4_mapped)
    for network, label in _NETWORKS:
        if address.version == network.version and address in network:
            return label
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST:
        return "reserved"
    return None


_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")


@lru_cache(maxsize=65536)
def place(address: IPAddress) -> Placement:
    """Special range if any, else the RIR country (None when no registry delegated it)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    label = special_range(address)
    if label is not None:
        return Placement(special=label, country=None)
    return Placement(special=None, country=iptocc.country_code(str(address)))


@dataclass(frozen=True)
class GeoDataInfo:
    """Which database placed the addresses, printed in every report."""

    package: str
    version: str
    built: str

    def describe(self) -> str:
        return f"{self.package} {self.version} (RIR delegation data built {self.built})"


@lru_cache(maxsize=1)
def geo_data_info() -> GeoDataInfo:
    """The iptocc version and the date its wheel was built from the nightly RIR data.

    iptocc does not expose the snapshot date itself; the wheel's CycloneDX SBOM carries
    the build timestamp, and the project rebuilds from the registries' files nightly.
    """
    dist = metadata.distribution("iptocc")
    built = "unknown"
    sbom = dist.read_text("sboms/iptocc-py.cyclonedx.json")
    if sbom:
        try:
            stamp = json.loads(sbom)["metadata"]["timestamp"]
            built = str(stamp)[:10]
        except (ValueError, KeyError, TypeError):
            built = "unknown"
    return GeoDataInfo(package="iptocc", version=dist.version, built=built)
