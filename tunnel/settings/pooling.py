"""``--pool-strategy`` and ``--health-check``: how a linked service with several targets is used.

A link that lists several targets (``--link redis=10.0.0.5:6379,10.0.0.6:6379``) or a
``dns:HOST:PORT`` member is a pool. ``--pool-strategy SERVICE=failover|round-robin|least-streams``
says how its streams are spread (failover, the first target that works, by default);
``--health-check SERVICE`` probes its targets with a TCP connect on a schedule, and
``--health-check SERVICE=send=PING\\r\\n,expect=+PONG,interval=5,timeout=2,rise=2,fall=3`` with a
request and the start of the answer expected (``\\r``, ``\\n``, ``\\t``, ``\\\\``, ``\\xHH`` and
``\\x2c`` for a comma are read as escapes). A health check makes even a one-target link a pool,
refused at once while its target is down. ``SERVICE`` is a reference as a client writes it
(``redis``, ``6379``, ``redis:6379``), resolved against the catalog when the configuration is
built; every mistake is one ``ConfigError`` line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from tunnel.errors import ConfigError
from tunnel.settings.links import Catalog, Service

Strategy = Literal["failover", "round-robin", "least-streams"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
_MAX_PROBE = 256  # bytes of a check's request or expected answer
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|[rnt\\])")
_SIMPLE = {"r": "\r", "n": "\n", "t": "\t", "\\": "\\"}
_CHECK_FORM = (
    "SERVICE or SERVICE=KEY=VALUE,... with keys interval, timeout (seconds), rise, fall (counts), "
    "send, expect (text with \\r \\n \\xHH escapes)"
)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """An active check of every target of a pool: connect, optionally send and expect."""

    interval: float = 5.0  # seconds between two rounds
    timeout: float = 2.0  # seconds one check may take, connect and answer together
    rise: int = 2  # passes in a row that bring a down target back
    fall: int = 3  # failures in a row that take a target down
    send: bytes = b""  # written once connected; nothing: a TCP connect is the check
    expect: bytes = b""  # what the answer must start with; nothing: any answer, or none

    def describe(self) -> str:
        probe = f", send {self.send!r}, expect {self.expect!r}" if self.send or self.expect else ""
        return (
            f"every {self.interval:g}s, timeout {self.timeout:g}s, rise {self.rise}, "
            f"fall {self.fall}{probe}"
        )


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """A pool's strategy and checks; a service with neither set uses the defaults."""

    strategy: Strategy = "failover"
    check: HealthCheck | None = None


def _unescape(text: str) -> bytes:
    def one(match: re.Match[str]) -> str:
        code = match[1]
        return chr(int(code[1:], 16)) if code[0] == "x" else _SIMPLE[code]

    value = _ESCAPE.sub(one, text)
    try:
        data = value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("only ASCII text and \\xHH escapes") from None
    if len(data) > _MAX_PROBE:
        raise ValueError(f"at most {_MAX_PROBE} bytes")
    return data


def _check_field(check: HealthCheck, key: str, value: str) -> HealthCheck:
    changed: dict[str, Any]
    if key in ("interval", "timeout"):
        seconds = float(value)
        if not 0.05 <= seconds <= 3600:
            raise ValueError("seconds between 0.05 and 3600")
        changed = {key: seconds}
    elif key in ("rise", "fall"):
        count = int(value)
        if not 1 <= count <= 100:
            raise ValueError("a count between 1 and 100")
        changed = {key: count}
    elif key in ("send", "expect"):
        changed = {key: _unescape(value)}
    else:
        raise ValueError("not a key of a health check")
    return replace(check, **changed)


def parse_health_check(text: str) -> tuple[str, HealthCheck]:
    """``SERVICE`` or ``SERVICE=KEY=VALUE,...``: the reference and its check."""
    ref, _, fields = text.partition("=")
    if not ref.strip():
        raise ConfigError(f"bad --health-check {text!r}: the service is missing; use {_CHECK_FORM}")
    check = HealthCheck()
    for item in filter(None, fields.split(",")):
        key, equals, value = item.partition("=")
        try:
            if not equals:
                raise ValueError("KEY=VALUE")
            check = _check_field(check, key.strip().lower(), value)
        except ValueError as exc:
            raise ConfigError(
                f"bad --health-check {text!r}: {item!r} wants {exc}; use {_CHECK_FORM}"
            ) from None
    if check.timeout > check.interval:
        raise ConfigError(
            f"bad --health-check {text!r}: the timeout ({check.timeout:g}s) is longer than the "
            f"interval ({check.interval:g}s); make it shorter"
        )
    return ref.strip(), check


def _names_udp(ref: str, catalog: Catalog) -> bool:
    try:
        catalog.resolve(ref, "udp")
    except ConfigError:
        return False
    return True


def _resolved(option: str, text: str, ref: str, catalog: Catalog) -> Service:
    try:
        service = catalog.resolve(ref)
    except ConfigError as exc:
        raise ConfigError(f"bad {option} {text!r}: {exc}") from None
    return service


def parse_pooling(
    strategies: Iterable[str], checks: Iterable[str], catalog: Catalog
) -> dict[Service, PoolSettings]:
    """The settings of every service given a strategy or a check; ConfigError otherwise."""
    chosen: dict[Service, PoolSettings] = {}
    for text in strategies:
        ref, equals, name = text.partition("=")
        strategy = name.strip().lower()
        if not equals or not ref.strip() or strategy not in STRATEGIES:
            raise ConfigError(
                f"bad --pool-strategy {text!r}: use SERVICE=STRATEGY, STRATEGY one of "
                f"{', '.join(STRATEGIES)}"
            )
        service = _resolved("--pool-strategy", text, ref.strip(), catalog)
        if not service.pool:
            raise ConfigError(
                f"--pool-strategy {text!r}: {service.full_name} has one target; list its "
                "targets in its link (ALIAS=HOST:PORT,HOST:PORT) to pool them"
            )
        settings = chosen.get(service, PoolSettings())
        chosen[service] = replace(settings, strategy=strategy)
    for text in checks:
        ref, check = parse_health_check(text)
        try:
            service = catalog.resolve(ref)
        except ConfigError as exc:
            if _names_udp(ref, catalog):
                raise ConfigError(
                    f"--health-check {text!r}: {ref!r} is a UDP service; health checks are for "
                    "TCP services"
                ) from None
            raise ConfigError(f"bad --health-check {text!r}: {exc}") from None
        settings = chosen.get(service, PoolSettings())
        chosen[service] = replace(settings, check=check)
    return chosen
