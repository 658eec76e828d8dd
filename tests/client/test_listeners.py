"""Which catalog entry an exposed service asks for, the seed's link variables included."""

from __future__ import annotations

import pytest

from client.config import ClientConfig
from client.connector import Connector
from client.listeners import Listeners, choose_service
from tunnel.protocol.messages import ServiceInfo
from tunnel.settings.links import Address, parse_expose

SEED = "REDIS_PORT_1234_TCP=tcp://192.168.1.52:6379"


def listeners(*expose: str) -> Listeners:
    config = ClientConfig(remotes=(Address("127.0.0.1", 7700),))
    return Listeners(Connector(config), tuple(parse_expose(text) for text in expose), "127.0.0.1")


@pytest.mark.parametrize(
    ("catalog", "chosen"),
    [
        ((ServiceInfo("redis", 6379),), "redis:6379"),
        ((ServiceInfo(None, 6379),), "6379"),
        ((ServiceInfo("redis", 7000),), "redis"),
        # alias and port beats port alone, which beats alias alone
        ((ServiceInfo("redis", 7000), ServiceInfo(None, 6379)), "6379"),
        ((ServiceInfo("redis", 7000), ServiceInfo("redis", 6379)), "redis:6379"),
        ((ServiceInfo("cache", 6379), ServiceInfo("db", 6379)), None),  # 6379 is ambiguous
        ((ServiceInfo("web", 80),), None),
    ],
)
def test_choose_service_takes_the_first_reference_offered(
    catalog: tuple[ServiceInfo, ...], chosen: str | None
) -> None:
    assert choose_service(catalog, ("redis:6379", "6379", "redis")) == chosen


def wanted(
    listening: Listeners, catalog: tuple[ServiceInfo, ...] | None
) -> tuple[list[tuple[tuple[str, int], tuple[str, ...]]], list[str]]:
    found, missing = listening.wanted(catalog, listening.specs, listening.bind)
    return [(key[:2], refs) for key, (_, refs) in found.items()], missing


def test_the_seed_listens_on_the_port_in_the_variables_name() -> None:
    assert wanted(listeners(SEED), (ServiceInfo("redis", 6379),)) == (
        [(("127.0.0.1", 1234), ("redis:6379",))],
        [],
    )
    # Before the catalog is in, the port is bound already and every reference is still open.
    assert wanted(listeners(SEED), None) == (
        [(("127.0.0.1", 1234), ("redis:6379", "6379", "redis"))],
        [],
    )


def test_a_seed_the_server_does_not_offer_keeps_its_port_and_names_every_reference_tried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listening = listeners(SEED)
    catalog = (ServiceInfo("web", 80),)
    found, missing = wanted(listening, catalog)
    # The port stays bound (consumers are refused at once until the server offers it).
    assert found == [(("127.0.0.1", 1234), ("redis:6379", "6379", "redis"))]
    assert missing == ["redis:6379"]
    with caplog.at_level("WARNING", logger="ambassador.client"):
        listening._note_missing(missing, catalog, remind=False)
    (line,) = caplog.messages
    assert "does not offer 'redis:6379' or '6379' or 'redis'" in line
    assert "(offered: web)" in line
