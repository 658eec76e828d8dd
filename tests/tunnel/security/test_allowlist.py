"""Source allowlists: CIDR parsing (one line per mistake) and matching, IPv4 and IPv6."""

from __future__ import annotations

import pytest

from tunnel.errors import ConfigError
from tunnel.security.allowlist import Allowlist, parse_expose_allow, parse_networks


def test_an_empty_list_allows_everyone() -> None:
    assert Allowlist().allows(("203.0.113.1", 5))


def test_ipv4_and_ipv6_networks_and_single_addresses() -> None:
    allowlist = parse_networks(["10.0.0.0/8, 192.0.2.7", "2001:db8::/32", "::1"], "--allow-from")
    assert allowlist.allows(("10.1.2.3", 1))
    assert allowlist.allows(("192.0.2.7", 1))
    assert not allowlist.allows(("192.0.2.8", 1))
    assert allowlist.allows(("2001:db8:5::1", 1, 0, 0))
    assert allowlist.allows(("::1", 1, 0, 0))
    assert not allowlist.allows(("2001:db9::1", 1, 0, 0))


def test_an_ipv4_mapped_peer_is_checked_as_ipv4() -> None:
    assert parse_networks(["10.0.0.0/8"], "x").allows(("::ffff:10.0.0.1", 1, 0, 0))


def test_a_unix_socket_peer_is_not_an_address_and_is_allowed() -> None:
    assert parse_networks(["10.0.0.0/8"], "x").allows("")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("10.0.0.1/8", "has host bits set"),
        ("10.0.0.0/33", "is not a CIDR"),
        ("example.com", "is not a CIDR"),
        ("", "is not a CIDR"),
        ("1" * 500, "is not a CIDR"),
    ],
)
def test_an_invalid_cidr_is_one_line_naming_the_forms(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as error:
        parse_networks([text], "--allow-from")
    message = str(error.value)
    assert message.startswith("bad --allow-from ") and "use a CIDR such as 10.0.0.0/8" in message
    assert "\n" not in message and len(message) < 300


def test_expose_allow_by_service_and_for_every_port() -> None:
    lists = parse_expose_allow(["Redis=10.0.0.0/8", "redis=::1", "127.0.0.1"])
    assert str(lists["redis"]) == "10.0.0.0/8, ::1/128"
    assert str(lists[""]) == "127.0.0.1/32"
    with pytest.raises(ConfigError, match=r"bad --expose-allow '1bad=10\.0\.0\.0/8'"):
        parse_expose_allow(["1bad=10.0.0.0/8"])
