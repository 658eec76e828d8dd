"""Source allowlists: which addresses may connect at all (CIDR lists, IPv4 and IPv6).

A list is checked the moment a connection is accepted, before it costs anything more than its
descriptor: the server's tunnel listener (``--allow-from``: which addresses may attempt a
session) and each of the client's exposed ports (``--expose-allow``: who may use it). An empty
list allows everyone, as before the option existed. An IPv4 address seen as IPv4-mapped IPv6
(a dual-stack listener) is checked as IPv4, so ``10.0.0.0/8`` means the same on either. A peer
with no IP address (a unix socket) is not an address a CIDR can name, and is allowed: the
socket file's permissions say who may connect to it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from tunnel.errors import ConfigError
from tunnel.security.auth import is_loopback
from tunnel.settings.links import Address, ExposeSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORMS = "a CIDR such as 10.0.0.0/8, 2001:db8::/32, or one address such as 192.0.2.7 or ::1"


@dataclass(frozen=True, slots=True)
class Allowlist:
    networks: tuple[Network, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.networks)

    def allows(self, peername: object) -> bool:
        """Whether a connection from ``peername`` (as a socket gives it) may go on."""
        if not self.networks:
            return True
        host = peername[0] if isinstance(peername, tuple) and peername else None
        if not isinstance(host, str):
            return True  # a unix socket's peer: not an address (see above)
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(network) for network in self.networks) or "everyone"


def parse_networks(texts: Iterable[str], option: str) -> Allowlist:
    """Each text a CIDR or an address, or several joined by commas; ConfigError in one line
    naming ``option`` otherwise. Host bits set (``10.0.0.1/8``) are a mistake, not rounded."""
    networks: list[Network] = []
    for text in texts:
        for item in text.split(","):
            item = item.strip()
            try:
                networks.append(ipaddress.ip_network(item, strict=True))
            except ValueError as exc:
                shown = item if len(item) <= 60 else item[:60] + "..."
                why = "has host bits set" if "host bits" in str(exc) else "is not a CIDR"
                raise ConfigError(f"bad {option} {shown!r}: it {why}; use {FORMS}") from None
    return Allowlist(tuple(dict.fromkeys(networks)))


# Who may send a PROXY header when --accept-proxy-from is not given: a balancer on this host.
LOOPBACK = Allowlist((ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")))


def proxy_header_sources(texts: Iterable[str], accept: bool, listen: Address) -> Allowlist:
    """Who may send a PROXY header to a tunnel listener on ``listen`` (either role's):
    ``--accept-proxy-from``, else loopback alone, which is only a safe guess on a loopback
    listener; beyond it the balancers must be named. ConfigError in one line otherwise."""
    texts = list(texts)
    if texts and not accept:
        raise ConfigError(
            "--accept-proxy-from applies only with --accept-proxy-protocol; add it, or drop "
            "--accept-proxy-from"
        )
    if texts:
        return parse_networks(texts, "--accept-proxy-from")
    if accept and not is_loopback(listen.host):
        raise ConfigError(
            f"--accept-proxy-protocol on {listen}, beyond loopback, needs --accept-proxy-from "
            "CIDR naming the load balancers' addresses (only they may send a PROXY header; "
            "without it only loopback may)"
        )
    return LOOPBACK


EVERY_EXPOSE = ""  # the key of a list given without SERVICE=: it applies to every exposed port


def parse_expose_allow(texts: Iterable[str]) -> dict[str, Allowlist]:
    """``--expose-allow`` values, ``SERVICE=CIDR[,CIDR]`` or ``CIDR[,CIDR]`` (every exposed
    port), by the service reference in canonical form; ConfigError in one line otherwise."""
    grouped: dict[str, list[str]] = {}
    for text in texts:
        service, equals, cidrs = text.rpartition("=")
        key = EVERY_EXPOSE
        if equals:
            try:
                key = ExposeSpec(None, None, service.strip()).service
            except ValueError as exc:
                raise ConfigError(
                    f"bad --expose-allow {text[:80]!r}: {exc}; use SERVICE=CIDR[,CIDR] with "
                    "SERVICE as in --expose (ALIAS, PORT or ALIAS:PORT), or CIDR[,CIDR] for "
                    "every exposed port"
                ) from None
        grouped.setdefault(key, []).append(cidrs)
    return {key: parse_networks(cidrs, "--expose-allow") for key, cidrs in grouped.items()}
