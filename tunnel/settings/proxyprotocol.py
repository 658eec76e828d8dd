"""``--proxy-protocol SERVICE=v1|v2``: which backends get a PROXY protocol header first.

A backend behind the tunnel sees every connection come from the server. One that speaks the
PROXY protocol (haproxy with ``accept-proxy``, nginx's ``proxy_protocol``, PostgreSQL poolers,
Redis-compatible proxies, ...) can see the consumer's real address instead: the server writes a
header with the consumer's endpoints before the first byte. Only a backend that expects the
header may get one (to any other it is garbage at the start of its protocol), so it is opt-in,
per link: ``SERVICE`` is a reference to a catalog entry as a client would write it (``redis``,
``6379``, ``redis:6379``), resolved against the catalog when the configuration is built.
"""

from __future__ import annotations

from collections.abc import Iterable

from tunnel.errors import ConfigError
from tunnel.settings.links import Catalog, Service

FORM = "SERVICE=v1 or SERVICE=v2 (SERVICE as in --link: ALIAS, PORT or ALIAS:PORT)"
_VERSIONS = {"v1": 1, "1": 1, "v2": 2, "2": 2}


def parse_proxy_protocol(texts: Iterable[str], catalog: Catalog) -> dict[Service, int]:
    """The PROXY protocol version of each link given; ConfigError, in one line, otherwise."""
    chosen: dict[Service, int] = {}
    for text in texts:
        ref, equals, version_text = text.partition("=")
        version = _VERSIONS.get(version_text.strip().lower())
        if not equals or not ref or version is None:
            raise ConfigError(f"bad --proxy-protocol {text!r}: use {FORM}")
        try:
            service = catalog.resolve(ref.strip())
        except ConfigError as exc:
            raise ConfigError(f"bad --proxy-protocol {text!r}: {exc}") from None
        earlier = chosen.setdefault(service, version)
        if earlier != version:
            raise ConfigError(
                f"--proxy-protocol gives {service.full_name} both v{earlier} and v{version}; "
                "keep one"
            )
    return chosen
