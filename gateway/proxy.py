"""Behind a load balancer: the client's address, the scheme and the host, as the proxies
say, but only when the connection comes from a proxy the operator trusts.

`--forwarded-allow-ips` (as hypercorn and uvicorn name it) lists trusted addresses or
networks, or `*`. For a request from a trusted peer, `Forwarded` (RFC 7239) is used if
present, else `X-Forwarded-For`, `-Proto` and `-Host`. The chain of addresses is read
from the right (the nearest proxy) and the first address that is not itself a trusted
proxy is the client; scheme and host come from the nearest proxy's values.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .config import ConfigError, parse_port

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class Forwarded:
    """What the proxies say about the original request."""

    client: tuple[str, int] | None
    scheme: str | None
    host: str | None


class TrustedProxies:
    """The peers whose forwarding headers are believed."""

    def __init__(self, spec: str) -> None:
        """`spec`: comma-separated addresses and networks; `*` among them means any peer."""
        items = [item for item in (part.strip() for part in spec.split(",")) if item]
        self.any = "*" in items
        self.networks: list[Network] = []
        for item in items:
            if item == "*":
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                message = f"--forwarded-allow-ips: not an address or network: {item!r}"
                raise ConfigError(message) from None
        self.enabled = self.any or bool(self.networks)

    def trusts(self, address: str) -> bool:
        """Whether `address` is a trusted proxy."""
        if self.any:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def resolve(self, peer: str | None, headers: list[tuple[bytes, bytes]]) -> Forwarded | None:
        """The forwarded facts, if the peer is trusted and sent any; else None."""
        if not self.enabled or peer is None or not self.trusts(peer):
            return None
        found = _collect(headers)
        if b"forwarded" in found:
            return self._from_forwarded(found[b"forwarded"])
        chain = [_address(item) for item in _items(found.get(b"x-forwarded-for", []))]
        return Forwarded(
            client=self._client(chain),
            scheme=_scheme(_last(found.get(b"x-forwarded-proto", []))),
            host=_host(_last(found.get(b"x-forwarded-host", []))),
        )

    def _from_forwarded(self, values: list[str]) -> Forwarded | None:
        elements = [_pairs(element) for element in _items(values)]
        if not elements:
            return None
        chain = [_address(element.get("for", "")) for element in elements]
        nearest = elements[-1]
        return Forwarded(
            self._client(chain), _scheme(nearest.get("proto")), _host(nearest.get("host"))
        )

    def _client(self, chain: list[tuple[str, int] | None]) -> tuple[str, int] | None:
        """The rightmost address that is not a trusted proxy (else the leftmost)."""
        addresses = [address for address in chain if address is not None]
        for address in reversed(addresses):
            if not self.trusts(address[0]):
                return address
        return addresses[0] if addresses else None


_FORWARDING_HEADERS = frozenset(
    {b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)


def _collect(headers: list[tuple[bytes, bytes]]) -> dict[bytes, list[str]]:
    found: dict[bytes, list[str]] = {}
    for name, value in headers:
        name = name.lower()
        if name in _FORWARDING_HEADERS:
            found.setdefault(name, []).append(value.decode("latin-1"))
    return found


def _items(values: list[str]) -> list[str]:
    """Comma-separated items over every copy of a header, in order."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _last(values: list[str]) -> str | None:
    items = _items(values)
    return items[-1] if items else None


def _pairs(element: str) -> dict[str, str]:
    """`for=1.2.3.4;proto=https` as a dict (RFC 7239 forwarded-pair, quotes removed)."""
    pairs = {}
    for pair in element.split(";"):
        name, _, value = pair.partition("=")
        pairs[name.strip().lower()] = value.strip().strip('"')
    return pairs


def _address(text: str) -> tuple[str, int] | None:
    """An IP address with an optional port (`[::1]:80`, `1.2.3.4:80`), or None."""
    text = text.strip()
    port = 0
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = parse_port(rest[1:]) or 0
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = parse_port(port_text) or 0
    else:
        host = text
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return None  # "unknown", an obfuscated name, or garbage


def _scheme(value: str | None) -> str | None:
    return value.lower() if value and value.lower() in ("http", "https") else None


def _host(value: str | None) -> str | None:
    return value if value and _HOST.match(value) else None
