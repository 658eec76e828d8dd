"""Which catalog entry an exposed service asks for, the seed's link variables included."""

from __future__ import annotations

import pytest

from client.config import ClientConfig
from client.connector import Connector
from client.listeners import Listeners, choose_service
from tunnel.errors import ConfigError
from tunnel.links import Address, parse_expose
from tunnel.messages import ServiceInfo

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


def test_the_seed_listens_on_the_port_in_the_variables_name() -> None:
    wanted = listeners(SEED).wanted((ServiceInfo("redis", 6379),))
    assert [(key[:2], refs) for key, (_, refs) in wanted.items()] == [
        (("127.0.0.1", 1234), ("redis:6379",))
    ]
    # Before the catalog is in, the port is bound already and every reference is still open.
    wanted = listeners(SEED).wanted(None)
    assert [(key[:2], refs) for key, (_, refs) in wanted.items()] == [
        (("127.0.0.1", 1234), ("redis:6379", "6379", "redis"))
    ]


def test_a_seed_the_server_does_not_offer_names_every_reference_tried() -> None:
    with pytest.raises(ConfigError) as error:
        listeners(SEED).wanted((ServiceInfo("web", 80),))
    message = str(error.value)
    assert "cannot expose 'redis:6379' or '6379' or 'redis'" in message
    assert "offered: web" in message
