"""Links to unix sockets: ``--link pg=unix:/run/postgresql/.s.PGSQL.5432``."""

from __future__ import annotations

import pytest

from tunnel.protocol.messages import CatalogChanged, ServiceInfo, decode_message, encode_message
from tunnel.settings.links import (
    Address,
    Catalog,
    ExposeSpec,
    LinkError,
    Service,
    UnknownService,
    links_from_env,
    parse_endpoint,
    parse_expose,
    parse_link,
)
from tunnel.settings.unixpath import UnixPath

PG = "/run/postgresql/.s.PGSQL.5432"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"pg=unix:{PG}", Service("pg", None, UnixPath(PG))),
        (f"pg:5432=unix:{PG}", Service("pg", 5432, UnixPath(PG))),
        (f"5432=unix:{PG}", Service(None, 5432, UnixPath(PG))),
        (f"PG=UNIX:{PG}", Service("pg", None, UnixPath(PG))),
        (
            "docker=unix:///var/run/docker.sock",
            Service("docker", None, UnixPath("/var/run/docker.sock")),
        ),
    ],
)
def test_parse_unix_link(text: str, expected: Service) -> None:
    assert parse_link(text) == expected
    assert parse_link(expected.to_text()) == expected


def test_a_unix_link_reads_back_as_written() -> None:
    assert parse_link(f"pg=unix:{PG}").to_text() == f"pg=unix:{PG}"
    assert parse_link(f"pg:6000=unix:{PG}").to_text() == f"pg:6000=unix:{PG}"


def test_tcp_endpoints_are_unchanged() -> None:
    assert parse_endpoint("db.example:5432") == Address("db.example", 5432)
    assert parse_endpoint("[::1]:5432") == Address("::1", 5432)
    assert parse_endpoint(f"unix:{PG}") == UnixPath(PG)


def test_a_portless_unix_link_is_reached_by_its_alias() -> None:
    catalog = Catalog((parse_link(f"pg=unix:{PG}"), parse_link("redis=10.0.0.5:6379")))
    assert catalog.resolve("pg").target == UnixPath(PG)
    assert catalog.resolve("PG").full_name == "pg"
    with pytest.raises(UnknownService, match="no service 'pg:5432'"):
        catalog.resolve("pg:5432")
    assert catalog.describe() == [{"alias": "pg", "port": None}, {"alias": "redis", "port": 6379}]


def test_a_portless_alias_may_not_be_shared() -> None:
    with pytest.raises(LinkError) as error:
        Catalog((parse_link(f"pg=unix:{PG}"), parse_link("pg:5432=10.0.0.7:5432")))
    assert str(error.value) == (
        f"links pg=unix:{PG} and pg=10.0.0.7:5432 share the alias 'pg', and the first has no "
        f"port to tell them apart; give it one, like pg:PORT=unix:{PG}, or another alias"
    )


def test_the_catalog_message_carries_a_portless_entry() -> None:
    # A client reads the entry an alias-only unix link is announced as; the wire's port is null.
    message = decode_message(
        b'{"type": "catalog", "catalog": [{"alias": "pg", "port": null}, '
        b'{"alias": null, "port": null}]}'
    )
    assert message == CatalogChanged((ServiceInfo("pg", None),), skipped=1)
    assert decode_message(encode_message(message)[4:]) == CatalogChanged((ServiceInfo("pg", None),))


def test_a_link_variable_is_tcp_only_and_says_how_to_link_a_socket() -> None:
    with pytest.raises(LinkError) as error:
        links_from_env({"PG_PORT_5432_TCP": f"unix://{PG}"})
    assert "link a unix socket with --link ALIAS=unix:/PATH instead" in str(error.value)


def test_parse_unix_expose() -> None:
    spec = parse_expose("unix:/run/ambassador/redis.sock=redis:6379")
    assert spec == ExposeSpec(
        None, None, "redis:6379", socket=UnixPath("/run/ambassador/redis.sock")
    )
    assert parse_expose(spec.to_text()) == spec
    assert parse_expose("unix:/run/a.sock=6379").port is None  # a socket, not port 6379


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("unix:/run/a.sock", "the service after '=' is missing"),
        ("unix:/run/a.sock=", "the service after '=' is missing"),
        ("unix:run/a.sock=redis", "is not absolute"),
    ],
)
def test_unix_expose_errors(text: str, said: str) -> None:
    with pytest.raises(LinkError) as error:
        parse_expose(text)
    assert said in str(error.value)
    assert "unix:/PATH=SERVICE" in str(error.value)
