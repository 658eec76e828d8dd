"""A link with several targets (a pool), dns: members, and the pool's own options: the forms
read, and every mistake one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import cli
from tunnel.errors import ConfigError
from tunnel.settings.config import default_map_for
from tunnel.settings.links import (
    Address,
    AllAddresses,
    Catalog,
    LinkError,
    parse_link,
)
from tunnel.settings.pooling import HealthCheck, parse_pooling
from tunnel.settings.unixpath import UnixPath


def test_a_link_may_list_several_targets_and_dns_names() -> None:
    service = parse_link("redis=10.0.0.5:6379,unix:/run/r.sock,dns:redis.internal:6380")
    assert service.port == 6379
    assert service.target == Address("10.0.0.5", 6379)
    assert service.members == (
        Address("10.0.0.5", 6379),
        UnixPath("/run/r.sock"),
        AllAddresses(Address("redis.internal", 6380)),
    )
    assert parse_link(service.to_text()) == service
    lone = parse_link("redis=dns:redis.internal:6379")
    assert lone.pool and lone.target == Address("redis.internal", 6379)
    assert parse_link("redis=10.0.0.5:6379").pool == ()  # one target: no pool


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("r=10.0.0.5:1,10.0.0.5:1", "10.0.0.5:1 is listed twice; list each target once"),
        ("r=10.0.0.5:1,,10.0.0.6:1", "the list of targets has an empty entry"),
        ("r=10.0.0.5:1,", "the list of targets has an empty entry"),
        ("r=", "the target after '=' is missing"),
        ("r=udp:10.0.0.5:53,10.0.0.6:53", "a UDP service takes one target"),
        ("r=udp:dns:ns.internal:53", "a UDP service takes one target"),
        ("r=dns:redis.internal", "the port is missing"),
        ("r=" + ",".join(f"10.0.0.{i}:1" for i in range(65)), "at most 64 targets"),
    ],
)
def test_a_bad_pool_is_one_line(text: str, said: str) -> None:
    with pytest.raises(LinkError) as caught:
        parse_link(text)
    assert said in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_same_alias_twice_is_a_conflict_that_points_at_the_pool_form() -> None:
    with pytest.raises(LinkError, match=r"pool the targets in one link"):
        Catalog((parse_link("r=10.0.0.5:1"), parse_link("r=10.0.0.6:1")))


def test_a_config_file_lists_a_pool_as_an_array(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[links]\nredis = ["10.0.0.5:6379", "10.0.0.6:6379"]\n')
    assert list(default_map_for(cli, path)["link"]) == ["redis=10.0.0.5:6379,10.0.0.6:6379"]


def test_strategies_and_checks_are_read_per_service() -> None:
    catalog = Catalog((parse_link("redis=10.0.0.5:6379,10.0.0.6:6379"), parse_link("pg=h:5432")))
    chosen = parse_pooling(
        ["redis=round-robin"],
        ["redis=send=PING\\r\\n,expect=+PONG,interval=1,timeout=0.5,fall=2", "pg"],
        catalog,
    )
    redis, pg = catalog
    assert chosen[redis].strategy == "round-robin"
    assert chosen[redis].check == HealthCheck(1.0, 0.5, 2, 2, b"PING\r\n", b"+PONG")
    assert chosen[pg].check == HealthCheck()


@pytest.mark.parametrize(
    ("strategies", "checks", "said"),
    [
        (["redis=random"], [], "STRATEGY one of failover, round-robin, least-streams"),
        (["pg=round-robin"], [], "pg:5432 has one target; list its targets"),
        (["nosuch=failover"], [], "no service 'nosuch'"),
        ([], ["redis=timeout=9"], "the timeout (9s) is longer than the interval (5s)"),
        ([], ["redis=rise=0"], "'rise=0' wants a count between 1 and 100"),
        ([], ["redis=colour=blue"], "'colour=blue' wants not a key of a health check"),
        ([], ["redis=send=" + "x" * 300], "at most 256 bytes"),
        ([], ["dns"], "'dns' is a UDP service; health checks are for TCP services"),
    ],
)
def test_bad_pool_settings_are_one_line(
    strategies: list[str], checks: list[str], said: str
) -> None:
    catalog = Catalog(
        (
            parse_link("redis=10.0.0.5:6379,10.0.0.6:6379"),
            parse_link("pg=h:5432"),
            parse_link("dns=udp:10.0.0.2:53"),
        )
    )
    with pytest.raises(ConfigError) as caught:
        parse_pooling(strategies, checks, catalog)
    assert said in str(caught.value)
    assert "\n" not in str(caught.value)
