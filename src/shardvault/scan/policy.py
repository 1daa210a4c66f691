"""The scan policy: which jurisdictions and domains an app may talk to, read from TOML.

The file is versioned (``version = 1``) and validated whole when loaded, so a typo is a
one-line error before any file is scanned, never a silently ignored key. Jurisdiction
codes are upper-case ISO 3166-1 alpha-2 codes (``US``, ``CN``) or a named group (``EU``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shardvault.durability import read_bounded
from shardvault.errors import ConfigError
from shardvault.format_version import check_version
from shardvault.model import named
from shardvault.path_limits import os_reason

POLICY_VERSION = 1

EU_MEMBERS = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    ]
)
GROUPS: Mapping[str, frozenset[str]] = {
    "EU": EU_MEMBERS,
    "EEA": EU_MEMBERS | {"IS", "LI", "NO"},
}
_CODE = re.compile(r"^[A-Z]{2}$")
_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$")
_COMMENT_MODES = ("skip", "scan")

#: Hosts that appear in URLs as names of XML namespaces, DTDs and licences, not endpoints.
IDENTIFIER_HOSTS = frozenset(
    {
        "schemas.android.com",
        "schemas.microsoft.com",
        "schemas.xmlsoap.org",
        "www.w3.org",
        "w3.org",
        "xmlns.jcp.org",
        "java.sun.com",
        "xml.org",
        "purl.org",
        "json-schema.org",
        "www.apple.com",
        "www.apache.org",
        "www.gnu.org",
        "opensource.org",
        "ns.adobe.com",
    }
)
#: RFC 2606 / 6761 names that can never reach the internet.
RESERVED_SUFFIXES = ("localhost", "local", "test", "example", "invalid", "internal", "lan")
RESERVED_DOMAINS = frozenset({"example.com", "example.org", "example.net"})


@dataclass(frozen=True)
class Verdict:
    """What a policy says about one endpoint: a rule, or nothing to report."""

    rule_id: str
    explanation: str


@dataclass(frozen=True)
class Policy:
    """Validated, frozen policy; passed down to every worker."""

    allowed: frozenset[str] = frozenset()
    disallowed: frozenset[str] = frozenset()
    allowed_domains: frozenset[str] = frozenset()
    disallowed_domains: frozenset[str] = frozenset()
    domain_jurisdictions: Mapping[str, str] = field(default_factory=dict)
    ignore_hosts: frozenset[str] = IDENTIFIER_HOSTS
    scan_comments: bool = False

    def known_domains(self) -> frozenset[str]:
        """Every domain the policy names, so bare hostnames can be matched exactly."""
        return self.allowed_domains | self.disallowed_domains | frozenset(self.domain_jurisdictions)

    def judge_country(self, country: str | None) -> Verdict:
        """Rule for a public IP address placed in ``country`` (None: no registry data)."""
        where = country or "an unknown country"
        if country is not None and _in_any(country, self.disallowed):
            return Verdict("SV101", f"address is in {country}, a disallowed jurisdiction")
        if self.allowed and (country is None or not _in_any(country, self.allowed)):
            return Verdict("SV102", f"address is in {where}, outside the allowed jurisdictions")
        return Verdict("SV103", f"hard-coded public address in {where}")

    def judge_host(self, host: str) -> tuple[Verdict | None, str | None]:
        """Rule for a hostname and the jurisdiction the policy knows it by, if any."""
        host = host.lower().rstrip(".")
        if _is_reserved(host) or _matches(host, self.ignore_hosts):
            return None, None
        if (hit := _matches(host, self.disallowed_domains)) is not None:
            jur = _lookup(hit, self.domain_jurisdictions)
            return Verdict("SV111", f"{hit} is on the policy's disallowed list"), jur
        if _matches(host, self.allowed_domains) is not None:
            return None, _lookup(host, self.domain_jurisdictions)
        known = _matches(host, frozenset(self.domain_jurisdictions))
        if known is not None:
            jur = self.domain_jurisdictions[known]
            if _in_any(jur, self.disallowed):
                return Verdict("SV111", f"{known} is in {jur}, a disallowed jurisdiction"), jur
            if self.allowed and not _in_any(jur, self.allowed):
                return Verdict("SV112", f"{known} is in {jur}, outside the allowed ones"), jur
            if self.allowed:
                return None, jur
            return Verdict("SV113", f"{known} is in {jur}; the policy allows no list"), jur
        return Verdict("SV113", f"{host} is not on the policy's allowed list"), None


def _in_any(code: str, jurisdictions: frozenset[str]) -> bool:
    """True when ``code`` is one of ``jurisdictions`` or a member of a named group in it."""
    if code in jurisdictions:
        return True
    return any(code in GROUPS.get(j, ()) for j in jurisdictions)


def _matches(host: str, domains: frozenset[str]) -> str | None:
    """The listed domain that ``host`` is or is a subdomain of."""
    parts = host.split(".")
    for i in range(len(parts) - 1):
        candidate = ".".join(parts[i:])
        if candidate in domains:
            return candidate
    return None


def _lookup(host: str, table: Mapping[str, str]) -> str | None:
    hit = _matches(host, frozenset(table))
    return table[hit] if hit is not None else None


def _is_reserved(host: str) -> bool:
    last = host.rsplit(".", 1)[-1]
    return last in RESERVED_SUFFIXES or _matches(host, RESERVED_DOMAINS) is not None


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file; any problem is one ``ConfigError`` line."""
    try:
        raw = read_bounded(path)
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {named(str(path))}: {os_reason(exc)}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"policy file {named(str(path))} is not valid TOML: {exc}") from exc
    return parse_policy(data, source=str(path))


def parse_policy(data: Mapping[str, object], source: str = "policy") -> Policy:
    """Validate a decoded policy document; unknown keys are errors, not silently ignored."""
    check_version(data.get("version"), POLICY_VERSION, source)
    _only(data, {"version", "jurisdictions", "domains", "scan"}, source)
    jur = _table(data, "jurisdictions", source)
    _only(jur, {"allowed", "disallowed"}, f"{source} [jurisdictions]")
    dom = _table(data, "domains", source)
    _only(dom, {"allowed", "disallowed", "jurisdiction", "ignore"}, f"{source} [domains]")
    scan = _table(data, "scan", source)
    _only(scan, {"comments"}, f"{source} [scan]")
    allowed = _codes(jur.get("allowed", []), f"{source} jurisdictions.allowed")
    disallowed = _codes(jur.get("disallowed", []), f"{source} jurisdictions.disallowed")
    if both := allowed & disallowed:
        raise ConfigError(f"{source}: {sorted(both)} both allowed and disallowed")
    table = dom.get("jurisdiction", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: domains.jurisdiction must be a table of domain = CODE")
    mapping = {
        _domain(k, f"{source} domains.jurisdiction"): _code(v, f"{source} domains.{k}")
        for k, v in table.items()
    }
    comments = scan.get("comments", "skip")
    if comments not in _COMMENT_MODES:
        raise ConfigError(f"{source}: scan.comments must be 'skip' or 'scan', got {comments!r}")
    return Policy(
        allowed=allowed,
        disallowed=disallowed,
        allowed_domains=_domains(dom.get("allowed", []), f"{source} domains.allowed"),
        disallowed_domains=_domains(dom.get("disallowed", []), f"{source} domains.disallowed"),
        domain_jurisdictions=mapping,
        ignore_hosts=IDENTIFIER_HOSTS | _domains(dom.get("ignore", []), f"{source} domains.ignore"),
        scan_comments=comments == "scan",
    )


def _only(table: Mapping[str, object], keys: set[str], where: str) -> None:
    if extra := sorted(set(table) - keys):
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}")


def _table(data: Mapping[str, object], key: str, source: str) -> dict[str, object]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{key}] must be a table")
    return value


def _code(value: object, where: str) -> str:
    if not isinstance(value, str) or not (_CODE.match(value) or value in GROUPS):
        raise ConfigError(
            f"{where}: {value!r} is not a jurisdiction code (upper-case ISO code like US, or EU)"
        )
    return value


def _codes(values: object, where: str) -> frozenset[str]:
    if not isinstance(values, list):
        raise ConfigError(f"{where} must be a list of codes")
    return frozenset(_code(v, where) for v in values)


def _domain(value: object, where: str) -> str:
    if not isinstance(value, str) or not _DOMAIN.match(value.lower()):
        raise ConfigError(f"{where}: {value!r} is not a domain name")
    return value.lower()


def _domains(values: object, where: str) -> frozenset[str]:
    if not isinstance(values, list):
        raise ConfigError(f"{where} must be a list of domain names")
    return frozenset(_domain(v, where) for v in values)
