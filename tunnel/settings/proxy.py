"""Egress proxies: ``--proxy`` URLs, ``--proxy-from-env`` and which targets bypass the proxy.

A proxy is written ``http://HOST:PORT`` (an HTTP proxy's CONNECT) or ``socks5://HOST:PORT``
(``socks5h://`` is the same: the proxy always resolves the target's name). Credentials never
come in the URL, where they would show in ``ps``, shell history and ``--check-config``: they
come from a file (``--proxy-credentials-file``), read by the role and attached here.

With ``--proxy-from-env`` the proxy comes from the variables other programs read: for a TCP
tunnel that is ``https_proxy``/``HTTPS_PROXY``, else ``all_proxy``/``ALL_PROXY`` (the lower case
first, as curl reads them), and ``no_proxy``/``NO_PROXY`` lists the targets reached directly:
``*``, a name (which also covers its subdomains; a leading dot changes nothing), an address,
or a network in CIDR form.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from tunnel.errors import ConfigError

SCHEMES = {"http": "http", "socks5": "socks5", "socks5h": "socks5"}
DEFAULT_PORTS = {"http": 80, "socks5": 1080}
PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
BYPASS_VARIABLES = ("no_proxy", "NO_PROXY")


@dataclass(frozen=True, slots=True)
class Proxy:
    """One egress proxy: how to speak to it, where it is, and the credentials to give."""

    scheme: str  # "http" or "socks5"
    host: str
    port: int
    credentials: tuple[str, str] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """Which proxy a target is reached through: ``proxy``, unless ``bypass`` names it."""

    proxy: Proxy
    source: str  # where it was set: "--proxy" or the variable's name
    bypass: tuple[str, ...] = ()  # no_proxy entries, lower case

    def for_target(self, host: str) -> Proxy | None:
        """The proxy to reach ``host`` through, or None to connect directly."""
        return None if bypassed(host, self.bypass) else self.proxy


def parse_proxy(text: str, source: str = "--proxy") -> Proxy:
    """A proxy URL; ConfigError, naming ``source``, when it is not one this reads."""
    text = text.strip()
    if "://" not in text:
        raise ConfigError(
            f"{source} {text!r} names no scheme; write http://HOST:PORT or socks5://HOST:PORT"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{source} {text!r} is not a proxy URL: {exc}") from None
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigError(
            f"{source} {text!r}: the {parts.scheme} scheme is not supported; "
            "use http://HOST:PORT (CONNECT) or socks5://HOST:PORT"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{source} carries credentials in its URL, where ps and logs show them; remove them "
            "and put USER:PASSWORD in a file given by --proxy-credentials-file (chmod 600)"
        )
    if not parts.hostname:
        raise ConfigError(f"{source} {text!r} names no host; write {scheme}://HOST:PORT")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError(f"{source} {text!r}: a proxy URL has no path; write {scheme}://HOST:PORT")
    return Proxy(scheme, parts.hostname, port or DEFAULT_PORTS[scheme])


def proxy_route(
    proxy: str | None,
    from_env: bool,
    environ: Mapping[str, str],
    credentials: tuple[str, str] | None = None,
) -> ProxyRoute | None:
    """The route ``--proxy``/``--proxy-from-env`` ask for, credentials attached; None for
    direct connections."""
    if proxy and from_env:
        raise ConfigError(
            "--proxy and --proxy-from-env both name a proxy; give one "
            "(--proxy-from-env reads https_proxy, all_proxy and no_proxy)"
        )
    if proxy:
        route: ProxyRoute | None = ProxyRoute(parse_proxy(proxy), "--proxy")
    elif from_env:
        route = route_from_environ(environ)
    else:
        route = None
    if credentials is not None and route is not None:
        route = replace(route, proxy=replace(route.proxy, credentials=credentials))
    return route


def route_from_environ(environ: Mapping[str, str]) -> ProxyRoute | None:
    """The proxy the environment names for a TCP tunnel, if any."""
    for name in PROXY_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            bypass = next((environ[n] for n in BYPASS_VARIABLES if environ.get(n)), "")
            entries = tuple(e.strip().lower() for e in bypass.split(",") if e.strip())
            return ProxyRoute(parse_proxy(value, f"environment variable {name}"), name, entries)
    return None


def bypassed(host: str, entries: tuple[str, ...]) -> bool:
    """Whether ``host`` matches a no_proxy entry: reached directly, not through the proxy."""
    host = host.lower().strip("[]").rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in entries:
        if entry == "*":
            return True
        entry = entry.strip("[]").lstrip(".").rstrip(".")
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False
