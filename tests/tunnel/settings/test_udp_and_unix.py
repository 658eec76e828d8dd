"""The two prefixes together: ``udp:`` (how a service's bytes travel) and ``unix:`` (where they
go). A unix socket here is a stream socket, so a unix link or expose is TCP only."""

from __future__ import annotations

import json

import pytest

from tunnel.protocol.messages import CatalogChanged, ServiceInfo, decode_message
from tunnel.settings.links import (
    Address,
    Catalog,
    ExposeSpec,
    LinkError,
    Service,
    UnknownService,
    links_from_env,
    parse_expose,
    parse_link,
)
from tunnel.settings.unixpath import UnixPath

SOCK = "/run/app/dns.sock"
REFUSED = "a unix socket carries TCP services only, so udp: does not go with unix:"


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert message.splitlines() == [message], message
    return message


@pytest.mark.parametrize(
    "text",
    [
        f"dns=udp:unix:{SOCK}",
        f"dns=UDP:Unix:{SOCK}",
        "dns=udp:unix:///run/app/dns.sock",
        "dns=udp:unix:relative/path",  # refused for the combination, before the path's own fault
        f"dns:53=udp:unix:{SOCK}",
    ],
)
def test_a_udp_link_to_a_unix_socket_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(LinkError) as error:
        parse_link(text)
    message = _one_line(error)
    assert REFUSED in message
    assert "udp:HOST:PORT" in message and "unix:/PATH" in message  # the forms that do work


@pytest.mark.parametrize(
    "text", [f"udp:unix:{SOCK}=dns", f"UDP:unix:{SOCK}=dns:53", f"udp:unix:{SOCK}"]
)
def test_a_udp_expose_on_a_unix_socket_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(LinkError) as error:
        parse_expose(text)
    message = _one_line(error)
    assert REFUSED in message
    assert "unix:/PATH=SERVICE" in message and "udp: prefix" in message


def test_the_entries_themselves_refuse_udp_on_a_socket() -> None:
    with pytest.raises(ValueError, match="udp: does not go with unix:"):
        Service("dns", None, UnixPath(SOCK), "udp")
    with pytest.raises(ValueError, match="udp: does not go with unix:"):
        ExposeSpec(None, None, "dns", transport="udp", socket=UnixPath(SOCK))


def test_tcp_over_a_socket_and_udp_over_a_port_sit_side_by_side() -> None:
    tcp = parse_link(f"dns=unix:{SOCK}")
    udp = parse_link("dns=udp:127.0.0.1:53")
    assert tcp == Service("dns", None, UnixPath(SOCK), "tcp")
    assert udp == Service("dns", 53, Address("127.0.0.1", 53), "udp")
    # The port-less TCP entry keeps its alias to itself among TCP entries only: a UDP entry is
    # told apart by the stream's header.
    catalog = Catalog((tcp, udp))
    assert catalog.resolve("dns") == tcp
    assert catalog.resolve("dns", "udp") == udp
    assert catalog.describe() == [
        {"alias": "dns", "port": None},
        {"alias": "dns", "port": 53, "transport": "udp"},
    ]
    with pytest.raises(LinkError, match="share the alias 'dns'"):
        Catalog((tcp, parse_link("dns=127.0.0.1:53")))


def test_expose_forms_of_both_round_trip() -> None:
    on_socket = parse_expose(f"unix:{SOCK}=dns")
    on_udp = parse_expose("udp:127.0.0.1:5353=dns")
    assert (on_socket.socket, on_socket.transport) == (UnixPath(SOCK), "tcp")
    assert (on_udp.socket, on_udp.transport, on_udp.port) == (None, "udp", 5353)
    assert parse_expose(on_socket.to_text()) == on_socket
    assert parse_expose(on_udp.to_text()) == on_udp


def test_a_unix_socket_expose_of_a_udp_service_says_to_use_a_udp_port() -> None:
    catalog = Catalog((parse_link("dns=udp:127.0.0.1:53"),))
    with pytest.raises(UnknownService) as error:
        catalog.resolve(parse_expose(f"unix:{SOCK}=dns").service)
    assert "expose it as udp:PORT=dns" in _one_line(error)


def test_a_link_variable_of_either_transport_says_how_to_link_a_socket() -> None:
    for name, scheme in (("DNS_PORT_53_UDP", "udp://"), ("PG_PORT_5432_TCP", "tcp://")):
        with pytest.raises(LinkError) as error:
            links_from_env({name: f"unix://{SOCK}"})
        message = _one_line(error)
        assert f"not a {scheme} URL" in message
        assert "link a unix socket with --link ALIAS=unix:/PATH instead" in message


def test_a_catalog_entry_without_a_port_is_a_stream_or_skipped() -> None:
    body = json.dumps(
        {
            "type": "catalog",
            "catalog": [
                {"alias": "pg", "port": None},
                {"alias": "dns", "port": None, "transport": "udp"},  # no such thing: skipped
                {"alias": "dns", "port": 53, "transport": "udp"},
            ],
        }
    ).encode()
    assert decode_message(body) == CatalogChanged(
        (ServiceInfo("pg", None), ServiceInfo("dns", 53, "udp")), skipped=1
    )
