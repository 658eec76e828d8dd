"""Tests for tunnel.settings.links: --link, --expose, Docker link variables and the catalog."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tunnel.settings.links
from tunnel.errors import ConfigError, Reason, TunnelError
from tunnel.settings.links import (
    DEFAULT_TUNNEL_PORT,
    Address,
    AmbiguousService,
    Catalog,
    ExposeSpec,
    LinkError,
    SeedLink,
    Service,
    UnknownService,
    links_from_env,
    parse_address,
    parse_expose,
    parse_link,
    parse_seed_variable,
    seed_links_from,
    seed_links_from_env,
)


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    """The error's message, checked to be a single line."""
    message = str(error.value)
    assert message.splitlines() == [message], message
    return message


def service(alias: str | None, port: int, host: str, target_port: int | None = None) -> Service:
    return Service(alias, port, Address(host, port if target_port is None else target_port))


# --- a realistic environment: `docker run --link redis:redis --link db:db --link web:web`

DOCKER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOSTNAME": "4f1e2a3b5c6d",
    "HOME": "/root",
    "REDIS_NAME": "/ambassador/redis",
    "REDIS_PORT": "tcp://172.17.0.2:6379",
    "REDIS_PORT_6379_TCP": "tcp://172.17.0.2:6379",
    "REDIS_PORT_6379_TCP_ADDR": "172.17.0.2",
    "REDIS_PORT_6379_TCP_PORT": "6379",
    "REDIS_PORT_6379_TCP_PROTO": "tcp",
    "REDIS_ENV_GOSU_VERSION": "1.17",
    "REDIS_ENV_REDIS_VERSION": "7.2.4",
    "REDIS_ENV_REDIS_DOWNLOAD_URL": "http://download.redis.io/releases/redis-7.2.4.tar.gz",
    "DB_NAME": "/ambassador/db",
    "DB_PORT": "tcp://172.17.0.3:5432",
    "DB_PORT_5432_TCP": "tcp://172.17.0.3:5432",
    "DB_PORT_5432_TCP_ADDR": "172.17.0.3",
    "DB_PORT_5432_TCP_PORT": "5432",
    "DB_PORT_5432_TCP_PROTO": "tcp",
    "DB_ENV_POSTGRES_PASSWORD": "example",
    "DB_ENV_PG_MAJOR": "16",
    "WEB_NAME": "/ambassador/web",
    "WEB_PORT": "tcp://172.17.0.4:80",
    "WEB_PORT_80_TCP": "tcp://172.17.0.4:80",
    "WEB_PORT_80_TCP_ADDR": "172.17.0.4",
    "WEB_PORT_80_TCP_PORT": "80",
    "WEB_PORT_80_TCP_PROTO": "tcp",
    "WEB_PORT_443_TCP": "tcp://172.17.0.4:443",
    "WEB_PORT_443_TCP_ADDR": "172.17.0.4",
    "WEB_PORT_443_TCP_PORT": "443",
    "WEB_PORT_443_TCP_PROTO": "tcp",
    "WEB_PORT_53_UDP": "udp://172.17.0.4:53",
    "WEB_PORT_53_UDP_ADDR": "172.17.0.4",
    "WEB_PORT_53_UDP_PORT": "53",
    "WEB_PORT_53_UDP_PROTO": "udp",
    # The web container was itself started with a link-like variable; Docker
    # re-exports it here, but it is the web container's business, not ours.
    "WEB_ENV_UPSTREAM_PORT_8080_TCP": "tcp://10.1.2.3:8080",
}

# What a pod sees: the API server's Service, and one other Service (redis-master).
KUBERNETES_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOSTNAME": "ambassador-7d9f8b6c4d-x2k8q",
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
}

REDIS_MASTER_SERVICE_ENV = {
    "REDIS_MASTER_SERVICE_HOST": "10.0.0.11",
    "REDIS_MASTER_SERVICE_PORT": "6379",
    "REDIS_MASTER_PORT": "tcp://10.0.0.11:6379",
    "REDIS_MASTER_PORT_6379_TCP": "tcp://10.0.0.11:6379",
    "REDIS_MASTER_PORT_6379_TCP_PROTO": "tcp",
    "REDIS_MASTER_PORT_6379_TCP_PORT": "6379",
    "REDIS_MASTER_PORT_6379_TCP_ADDR": "10.0.0.11",
}

# Our own settings, and what Docker writes when the ambassador itself is linked
# under the alias "ambassador".
AMBASSADOR_ENV = {
    "AMBASSADOR_REMOTE": "192.168.1.52",
    "AMBASSADOR_LINK": "redis=10.0.0.5:6379",
    "AMBASSADOR_PORT": "tcp://172.17.0.9:7700",
    "AMBASSADOR_PORT_7700_TCP": "tcp://172.17.0.9:7700",
    "AMBASSADOR_PORT_7700_TCP_ADDR": "172.17.0.9",
}


# --- the errors


def test_errors_belong_to_the_project_hierarchy() -> None:
    assert issubclass(LinkError, ConfigError)
    assert issubclass(UnknownService, ConfigError)
    assert issubclass(AmbiguousService, ConfigError)
    assert issubclass(ConfigError, TunnelError)
    assert UnknownService.reason is Reason.UNKNOWN_SERVICE
    assert AmbiguousService.reason is Reason.UNKNOWN_SERVICE


def test_default_tunnel_port() -> None:
    assert DEFAULT_TUNNEL_PORT == 7700


def test_the_module_does_no_io() -> None:
    tree = ast.parse(Path(tunnel.settings.links.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "ssl", "time", "os", "selectors"}


# --- addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5:6379", Address("10.0.0.5", 6379)),
        ("redis.internal:6379", Address("redis.internal", 6379)),
        ("Redis-Primary:1", Address("Redis-Primary", 1)),
        ("[::1]:6379", Address("::1", 6379)),
        ("[fd00::5]:65535", Address("fd00::5", 65535)),
        ("[fe80::1%eth0]:22", Address("fe80::1%eth0", 22)),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected
    assert str(parse_address(text)) == text


def test_parse_address_defaults() -> None:
    assert parse_address("db.local", default_port=5432) == Address("db.local", 5432)
    assert parse_address("[::1]", default_port=7700) == Address("::1", 7700)
    assert parse_address("16379", default_host="127.0.0.1") == Address("127.0.0.1", 16379)
    # An explicit part always wins over a default.
    assert parse_address("db:1", default_port=2, default_host="x") == Address("db", 1)


def test_address_str_brackets_ipv6_only() -> None:
    assert str(Address("::1", 6379)) == "[::1]:6379"
    assert str(Address("10.0.0.5", 6379)) == "10.0.0.5:6379"
    assert str(Address("redis", 6379)) == "redis:6379"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("redis", "port is missing"),
        ("6379", "host is missing"),
        (":6379", "host is missing"),
        ("redis:", "not a port number"),
        ("redis:0", "outside 1..65535"),
        ("redis:65536", "outside 1..65535"),
        ("redis:-1", "not a port number"),
        ("redis:\uff16\uff13\uff17\uff19", "not a port number"),  # full-width digits
        ("redis:" + "9" * 5000, "outside 1..65535"),
        ("redis :6379", "whitespace"),
        ("redis:6379\n", "whitespace"),
        ("fd00::5:6379", "brackets"),
        ("[fd00::5:6379", "closing ']'"),
        ("[fd00::5]6379", "expected ':PORT'"),
        ("[redis]:6379", "only for IPv6"),
        ("[fd00::zz]:6379", "not a valid IPv6 address"),
        ("[fe80::1%a=b]:6379", "not a valid IPv6 address"),
        ("300.1.2.3:80", "not a valid IPv4 address"),
        ("red!s:6379", "not a valid host name"),
        ("-redis:6379", "not a valid host name"),
        ("tcp://10.0.0.5:6379", "not a URL"),
    ],
)
def test_parse_address_errors(text: str, reason: str) -> None:
    with pytest.raises(LinkError) as error:
        parse_address(text)
    message = one_line(error)
    assert reason in message
    assert repr(text) in message
    assert "HOST:PORT" in message


def test_address_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match="outside"):
        Address("redis", 65536)
    # Port 0 is kept for listening sockets: the system picks a free port.
    assert Address("127.0.0.1", 0).port == 0
    with pytest.raises(ValueError, match="missing"):
        Address("", 6379)


# --- --link values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis=10.0.0.5:6379", service("redis", 6379, "10.0.0.5")),
        ("6379=10.0.0.5:6379", service(None, 6379, "10.0.0.5")),
        ("redis:6380=10.0.0.5:6379", service("redis", 6380, "10.0.0.5", 6379)),
        ("cache=[fd00::5]:6379", service("cache", 6379, "fd00::5")),
        ("16379=10.0.0.5:6379", service(None, 16379, "10.0.0.5", 6379)),
        ("Redis_Main-2=cache.internal:6379", service("redis_main-2", 6379, "cache.internal")),
        ("db=DB.Example.COM:5432", service("db", 5432, "DB.Example.COM")),
    ],
)
def test_parse_link(text: str, expected: Service) -> None:
    assert parse_link(text) == expected


def test_link_to_text() -> None:
    assert str(parse_link("redis=10.0.0.5:6379")) == "redis=10.0.0.5:6379"
    assert str(parse_link("REDIS:6380=10.0.0.5:6379")) == "redis:6380=10.0.0.5:6379"
    assert str(parse_link("6379=[::1]:6379")) == "6379=[::1]:6379"
    assert parse_link("redis:6379=10.0.0.5:6379").to_text() == "redis=10.0.0.5:6379"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("redis", "'=' is missing"),
        ("10.0.0.5:6379", "'=' is missing"),
        ("=10.0.0.5:6379", "before '=' is missing"),
        ("redis=", "after '=' is missing"),
        ("redis=10.0.0.5", "port is missing"),
        ("1redis=10.0.0.5:6379", "not an alias"),
        ("re.dis=10.0.0.5:6379", "not an alias"),
        ("a" * 64 + "=10.0.0.5:6379", "not an alias"),
        ("redis:0=10.0.0.5:6379", "outside 1..65535"),
        ("redis:x=10.0.0.5:6379", "not a port number"),
        ("0=10.0.0.5:6379", "outside 1..65535"),
        ("redis=10.0.0.5:70000", "outside 1..65535"),
        ("redis=fd00::5:6379", "brackets"),
        ("redis = 10.0.0.5:6379", "whitespace"),
        ("redis=tcp://10.0.0.5:6379", "not a URL"),
        ("redis=10.0.0.5:6379=x", "not a port number"),
    ],
)
def test_parse_link_errors(text: str, reason: str) -> None:
    with pytest.raises(LinkError) as error:
        parse_link(text)
    message = one_line(error)
    assert reason in message
    assert repr(text) in message
    assert "ALIAS=TARGET" in message and "HOST:PORT" in message  # says which forms are accepted


def test_service_names_and_matching() -> None:
    redis = service("redis", 6379, "10.0.0.5")
    bare = service(None, 8080, "10.0.0.6")
    assert (redis.name, redis.full_name) == ("redis", "redis:6379")
    assert (bare.name, bare.full_name) == ("8080", "8080")
    for ref in ("redis", "REDIS", "6379", "redis:6379"):
        assert redis.matches(ref), ref
    for ref in ("cache", "6380", "redis:6380", "cache:6379", "", "redis:", "re dis"):
        assert not redis.matches(ref), ref
    assert bare.matches("8080")
    assert not bare.matches("redis:8080")


def test_service_refuses_non_canonical_alias() -> None:
    with pytest.raises(ValueError, match="lower-case"):
        Service("Redis", 6379, Address("10.0.0.5", 6379))


# --- the catalog


CATALOG = Catalog(
    (
        service("redis", 6379, "10.0.0.5"),
        service("cache", 6379, "10.0.0.7"),
        service("db", 5432, "10.0.0.6"),
        service("db", 5433, "10.0.0.6"),
        service(None, 8080, "10.0.0.8"),
        service("web", 9090, "10.0.0.8", 80),
    )
)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("redis", "redis:6379"),
        ("Redis", "redis:6379"),
        ("redis:6379", "redis:6379"),
        ("cache:6379", "cache:6379"),
        ("db:5432", "db:5432"),
        ("db:5433", "db:5433"),
        ("5433", "db:5433"),
        ("8080", "8080"),
        ("web", "web:9090"),
        ("9090", "web:9090"),
    ],
)
def test_resolve(ref: str, expected: str) -> None:
    assert CATALOG.resolve(ref).full_name == expected


def test_resolve_by_target_port_is_not_a_name() -> None:
    # web is announced as 9090; the backend's own port stays private.
    with pytest.raises(UnknownService):
        CATALOG.resolve("80")


@pytest.mark.parametrize(
    ("ref", "candidates"),
    [("db", ["db:5432", "db:5433"]), ("6379", ["redis:6379", "cache:6379"])],
)
def test_resolve_ambiguous(ref: str, candidates: list[str]) -> None:
    with pytest.raises(AmbiguousService) as error:
        CATALOG.resolve(ref)
    message = one_line(error)
    assert repr(ref) in message
    assert "alias:port" in message
    for name in candidates:
        assert name in message


def test_bare_port_reaches_the_entry_linked_by_port_alone() -> None:
    catalog = Catalog((service("redis", 6379, "10.0.0.5"), service(None, 6379, "10.0.0.9")))
    assert catalog.resolve("6379").target.host == "10.0.0.9"
    assert catalog.resolve("redis").target.host == "10.0.0.5"


@pytest.mark.parametrize("ref", ["mysql", "6380", "redis:6380", "mysql:6379"])
def test_resolve_unknown_lists_the_offer(ref: str) -> None:
    with pytest.raises(UnknownService) as error:
        CATALOG.resolve(ref)
    message = one_line(error)
    assert repr(ref) in message
    assert "offered: redis:6379, cache:6379, db:5432, db:5433, 8080, web:9090" in message
    assert "10.0.0" not in message  # targets stay private


@pytest.mark.parametrize("ref", ["", "re dis", "redis:0", "1redis", "a=b", "redis\n"])
def test_resolve_malformed_reference(ref: str) -> None:
    with pytest.raises(UnknownService) as error:
        CATALOG.resolve(ref)
    message = one_line(error)
    assert repr(ref) in message
    assert "ALIAS, PORT or ALIAS:PORT" in message


def test_resolve_in_an_empty_catalog() -> None:
    with pytest.raises(UnknownService, match="no services are linked"):
        Catalog().resolve("redis")


def test_long_offer_is_cut_short() -> None:
    catalog = Catalog(tuple(service(None, port, "10.0.0.1") for port in range(1000, 1050)))
    with pytest.raises(UnknownService) as error:
        catalog.resolve("1")
    assert "and 30 more" in one_line(error)


def test_catalog_drops_exact_repeats() -> None:
    redis = service("redis", 6379, "10.0.0.5")
    db = service("db", 5432, "10.0.0.6")
    catalog = Catalog((redis, db, redis))
    assert catalog.entries == (redis, db)
    assert len(catalog) == 2
    assert list(catalog) == [redis, db]
    assert catalog == Catalog((redis, db))


def test_catalog_refuses_two_targets_for_one_name() -> None:
    with pytest.raises(LinkError) as error:
        Catalog((parse_link("redis=10.0.0.5:6379"), parse_link("redis=10.0.0.6:6379")))
    message = one_line(error)
    assert "redis=10.0.0.5:6379" in message
    assert "redis=10.0.0.6:6379" in message


def test_catalog_merge() -> None:
    from_env = links_from_env({"REDIS_PORT_6379_TCP": "tcp://10.0.0.5:6379"})
    merged = from_env.merge(
        [parse_link("redis=10.0.0.5:6379"), parse_link("db=10.0.0.6:5432")],
        Catalog((parse_link("8080=10.0.0.8:80"),)),
    )
    assert [entry.full_name for entry in merged] == ["redis:6379", "db:5432", "8080"]
    assert len(from_env) == 1  # merge builds a new catalog
    with pytest.raises(LinkError, match=r"redis=10\.0\.0\.9:6379"):
        merged.merge([parse_link("redis=10.0.0.9:6379")])


def test_describe_announces_names_not_targets() -> None:
    catalog = Catalog((parse_link("redis:6380=10.0.0.5:6379"), parse_link("8080=10.0.0.8:80")))
    assert catalog.describe() == [
        {"alias": "redis", "port": 6380},
        {"alias": None, "port": 8080},
    ]


# --- Docker link variables on the server


def test_links_from_docker_env_one_entry_per_alias_and_port() -> None:
    catalog = links_from_env(DOCKER_ENV)
    assert sorted(catalog.entries, key=lambda entry: entry.full_name) == [
        service("db", 5432, "172.17.0.3"),
        service("redis", 6379, "172.17.0.2"),
        service("web", 443, "172.17.0.4"),
        # The _UDP variable is a UDP service of the same name (it used to be skipped).
        Service("web", 53, Address("172.17.0.4", 53), "udp"),
        service("web", 80, "172.17.0.4"),
    ]


def test_links_from_env_multiple_aliases_for_one_port() -> None:
    catalog = links_from_env(
        {
            "REDIS_PORT_6379_TCP": "tcp://10.0.0.5:6379",
            "CACHE_PORT_6379_TCP": "tcp://10.0.0.7:6379",
        }
    )
    assert len(catalog) == 2
    assert catalog.resolve("cache").target == Address("10.0.0.7", 6379)
    with pytest.raises(AmbiguousService):
        catalog.resolve("6379")


def test_links_from_env_alias_with_underscores_and_ipv6() -> None:
    catalog = links_from_env(
        {
            "MY_DB_PORT_5432_TCP": "tcp://10.0.0.6:5432",
            "CACHE_PORT_6379_TCP": "tcp://[fd00::5]:6379",
        }
    )
    assert catalog.resolve("my_db") == service("my_db", 5432, "10.0.0.6")
    assert catalog.resolve("cache").target == Address("fd00::5", 6379)


def test_links_from_env_takes_the_port_from_the_name() -> None:
    catalog = links_from_env({"REDIS_PORT_6379_TCP": "tcp://10.0.0.5:16379"})
    assert catalog.entries == (service("redis", 6379, "10.0.0.5", 16379),)


def test_kubernetes_pod_environment_holds_no_links() -> None:
    assert len(links_from_env(KUBERNETES_ENV)) == 0


def test_kubernetes_services_other_than_the_api_are_links() -> None:
    catalog = links_from_env(KUBERNETES_ENV | REDIS_MASTER_SERVICE_ENV)
    assert catalog.entries == (service("redis_master", 6379, "10.0.0.11"),)


def test_ambassador_settings_are_never_links() -> None:
    assert len(links_from_env(AMBASSADOR_ENV)) == 0


def test_linked_containers_environment_is_not_ours_unless_it_is_a_link() -> None:
    # Without WEB_NAME, "WEB_ENV" is just an alias that happens to contain ENV.
    catalog = links_from_env({"WEB_ENV_PORT_80_TCP": "tcp://10.0.0.4:80"})
    assert catalog.entries == (service("web_env", 80, "10.0.0.4"),)


def test_udp_ports_are_udp_services() -> None:
    (dns,) = links_from_env({"DNS_PORT_53_UDP": "udp://10.0.0.53:53"})
    assert dns.transport == "udp"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("REDIS_PORT_6379_TCP", "udp://10.0.0.5:6379", "tcp://"),
        ("REDIS_PORT_6379_TCP", "10.0.0.5:6379", "tcp://"),
        ("REDIS_PORT_6379_TCP", "tcp://10.0.0.5", "port is missing"),
        ("REDIS_PORT_6379_TCP", "tcp://fd00::5:6379", "brackets"),
        ("REDIS_PORT_6379_TCP", "", "empty"),
        ("REDIS_PORT_0_TCP", "tcp://10.0.0.5:6379", "outside 1..65535"),
        ("REDIS_PORT_99999_TCP", "tcp://10.0.0.5:6379", "outside 1..65535"),
        ("A" * 64 + "_PORT_80_TCP", "tcp://10.0.0.5:80", "longer than 63"),
    ],
)
def test_links_from_env_malformed_variable(name: str, value: str, reason: str) -> None:
    with pytest.raises(LinkError) as error:
        links_from_env({"HOME": "/root", name: value})
    message = one_line(error)
    assert name in message
    assert reason in message


# --- --expose values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6379", ExposeSpec(None, 6379, "6379")),
        ("redis", ExposeSpec(None, None, "redis")),
        ("REDIS", ExposeSpec(None, None, "redis")),
        ("db:5432", ExposeSpec(None, None, "db:5432")),
        ("16379=redis", ExposeSpec(None, 16379, "redis")),
        ("16379=6379", ExposeSpec(None, 16379, "6379")),
        ("127.0.0.1:16379=6379", ExposeSpec("127.0.0.1", 16379, "6379")),
        ("[::1]:16379=redis", ExposeSpec("::1", 16379, "redis")),
        ("0.0.0.0:6379=db:5432", ExposeSpec("0.0.0.0", 6379, "db:5432")),
        ("localhost:6379=Redis", ExposeSpec("localhost", 6379, "redis")),
        (
            "REDIS_PORT_6379_TCP=tcp://192.168.1.52:6379",
            ExposeSpec(None, 6379, "redis:6379", ("6379", "redis")),
        ),
        (
            "REDIS_PORT_1234_TCP=tcp://192.168.1.52:6379",
            ExposeSpec(None, 1234, "redis:6379", ("6379", "redis")),
        ),
    ],
)
def test_parse_expose(text: str, expected: ExposeSpec) -> None:
    assert parse_expose(text) == expected


def test_expose_to_text() -> None:
    assert [
        str(parse_expose(text))
        for text in ("6379", "redis", "16379=redis", "6379=6379", "[::1]:16379=db:5432")
    ] == ["6379", "redis", "16379=redis", "6379", "[::1]:16379=db:5432"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("0", "outside 1..65535"),
        ("1redis", "not an alias"),
        ("127.0.0.1:16379", "not an alias"),
        ("16379=", "both sides"),
        ("=redis", "both sides"),
        ("70000=redis", "outside 1..65535"),
        ("localhost=redis", "port is missing"),
        ("[::1]=redis", "port is missing"),
        ("::1:16379=redis", "brackets"),
        ("16379=re dis", "whitespace"),
        ("16379=redis:0", "outside 1..65535"),
        ("16379=tcp://192.168.1.52:6379", "variable name"),
        ("16379=a=b", "not an alias"),
    ],
)
def test_parse_expose_errors(text: str, reason: str) -> None:
    with pytest.raises(LinkError) as error:
        parse_expose(text)
    message = one_line(error)
    assert reason in message
    assert repr(text) in message
    assert "LOCALPORT=SERVICE" in message


def test_expose_spec_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match="bind address needs a local port"):
        ExposeSpec("127.0.0.1", None, "redis")
    with pytest.raises(ValueError, match="not an alias"):
        ExposeSpec(None, None, "1redis")


def test_expose_spec_bare_port_service_listens_on_that_port() -> None:
    assert ExposeSpec(None, None, "6379") == ExposeSpec(None, 6379, "6379")


# --- Docker link variables on the client ("seed" variables)


def test_parse_seed_variable() -> None:
    assert parse_seed_variable("REDIS_PORT_6379_TCP", "tcp://192.168.1.52:6379") == SeedLink(
        "192.168.1.52", ExposeSpec(None, 6379, "redis:6379", ("6379", "redis"))
    )
    # As the seed's docs put it, -e REDIS_PORT_1234_TCP=tcp://192.168.1.52:6379 "will forward
    # the local 1234 port to the remote IP and port": the name's port is where we listen, the
    # URL's port is the service the remote host published.
    seed = parse_seed_variable("REDIS_PORT_1234_TCP", "tcp://192.168.1.52:6379")
    assert seed == SeedLink("192.168.1.52", ExposeSpec(None, 1234, "redis:6379", ("6379", "redis")))
    assert seed.expose.refs == ("redis:6379", "6379", "redis")
    seed = parse_seed_variable("MY_DB_PORT_5432_TCP", "tcp://[fd00::52]:15432")
    assert seed == SeedLink("fd00::52", ExposeSpec(None, 5432, "my_db:15432", ("15432", "my_db")))


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("REDIS_PORT_6379_TCP", "udp://192.168.1.52:6379", "tcp://"),
        ("REDIS_PORT_6379_TCP", "tcp://", "empty"),
        ("REDIS_PORT_6379_UDP", "tcp://192.168.1.52:6379", "udp://"),
        ("REDIS", "tcp://192.168.1.52:6379", "ALIAS_PORT_N_TCP"),
    ],
)
def test_parse_seed_variable_errors(name: str, value: str, reason: str) -> None:
    with pytest.raises(LinkError) as error:
        parse_seed_variable(name, value)
    message = one_line(error)
    assert name in message
    assert reason in message


def test_parse_expose_of_a_malformed_seed_names_the_variable() -> None:
    with pytest.raises(LinkError) as error:
        parse_expose("REDIS_PORT_6379_TCP=udp://192.168.1.52:6379")
    assert "REDIS_PORT_6379_TCP" in one_line(error)


def test_seed_links_from_env() -> None:
    environ = {
        "HOME": "/root",
        "REDIS_PORT": "tcp://192.168.1.52:6379",
        "REDIS_PORT_6379_TCP": "tcp://192.168.1.52:6379",
        "REDIS_PORT_6379_TCP_ADDR": "192.168.1.52",
        "REDIS_PORT_6379_TCP_PORT": "6379",
        "REDIS_PORT_6379_TCP_PROTO": "tcp",
        "REDIS_NAME": "/client/redis",
        "DB_PORT_5432_TCP": "tcp://192.168.1.52:5432",
        "DB_PORT_5432_TCP_ADDR": "192.168.1.52",
    }
    host, specs = seed_links_from_env(environ | KUBERNETES_ENV | AMBASSADOR_ENV)
    assert host == "192.168.1.52"
    assert specs == [
        ExposeSpec(None, 5432, "db:5432", ("5432", "db")),
        ExposeSpec(None, 6379, "redis:6379", ("6379", "redis")),
    ]


def test_seed_links_from_env_one_port_under_two_aliases_is_one_listener() -> None:
    host, specs = seed_links_from_env(
        {
            "REDIS_PORT_6379_TCP": "tcp://192.168.1.52:6379",
            "CACHE_PORT_6379_TCP": "tcp://192.168.1.52:6379",
        }
    )
    assert (host, specs) == (
        "192.168.1.52",
        [ExposeSpec(None, 6379, "cache:6379", ("6379", "cache"))],
    )


def test_seed_links_two_services_for_one_local_port() -> None:
    with pytest.raises(LinkError) as error:
        seed_links_from_env(
            {
                "REDIS_PORT_6379_TCP": "tcp://192.168.1.52:6379",
                "CACHE_PORT_6379_TCP": "tcp://192.168.1.52:16379",
            }
        )
    assert "local port 6379" in one_line(error)


def test_seed_links_from_env_without_links() -> None:
    assert seed_links_from_env(KUBERNETES_ENV | AMBASSADOR_ENV) == (None, [])


def test_seed_links_naming_different_hosts() -> None:
    with pytest.raises(LinkError) as error:
        seed_links_from_env(
            {
                "REDIS_PORT_6379_TCP": "tcp://192.168.1.52:6379",
                "DB_PORT_5432_TCP": "tcp://192.168.1.53:5432",
            }
        )
    message = one_line(error)
    assert "192.168.1.52 (REDIS_PORT_6379_TCP)" in message
    assert "192.168.1.53 (DB_PORT_5432_TCP)" in message


def test_seed_hosts_compare_without_case() -> None:
    host, specs = seed_links_from_env(
        {"A_PORT_1_TCP": "tcp://Server.Example:1", "B_PORT_2_TCP": "tcp://server.example:2"}
    )
    assert host == "Server.Example"
    assert len(specs) == 2


def test_seed_links_from_expose_values() -> None:
    host, specs = seed_links_from(
        ["REDIS_PORT_6379_TCP=tcp://192.168.1.52:6379", "127.0.0.1:15432=db", "6379"]
    )
    assert host == "192.168.1.52"
    assert specs == [
        ExposeSpec(None, 6379, "redis:6379", ("6379", "redis")),
        ExposeSpec("127.0.0.1", 15432, "db"),
        ExposeSpec(None, 6379, "6379"),
    ]
    assert seed_links_from(["redis", "8080"]) == (
        None,
        [ExposeSpec(None, None, "redis"), ExposeSpec(None, 8080, "8080")],
    )
    with pytest.raises(LinkError, match=r"192\.168\.1\.52 .*10\.0\.0\.1"):
        seed_links_from(["A_PORT_1_TCP=tcp://192.168.1.52:1", "B_PORT_2_TCP=tcp://10.0.0.1:2"])


# --- properties

ALIASES = st.from_regex(r"[a-z][a-z0-9_-]{0,62}", fullmatch=True)
PORTS = st.integers(min_value=1, max_value=65535)
HOSTS = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[A-Za-z][A-Za-z0-9.-]{0,30}", fullmatch=True),
)
REFS = st.one_of(
    ALIASES,
    PORTS.map(str),
    st.tuples(ALIASES, PORTS).map(lambda pair: f"{pair[0]}:{pair[1]}"),
)
SERVICES = st.builds(
    Service, alias=st.none() | ALIASES, port=PORTS, target=st.builds(Address, HOSTS, PORTS)
)
EXPOSE_SPECS = st.one_of(
    st.builds(ExposeSpec, bind=st.none(), port=st.none() | PORTS, service=REFS),
    st.builds(ExposeSpec, bind=HOSTS, port=PORTS, service=REFS),
)
# Text made mostly of the characters the grammar cares about, to reach deep paths.
LINKISH = st.text(alphabet="abrR_-019:=[]./%tcp \n", max_size=30)


@given(st.one_of(st.text(), LINKISH))
def test_parse_link_returns_or_raises_link_error(text: str) -> None:
    try:
        parsed = parse_link(text)
    except LinkError as error:
        assert str(error).splitlines() == [str(error)]
    else:
        assert parse_link(parsed.to_text()) == parsed


@given(st.one_of(st.text(), LINKISH))
def test_parse_expose_returns_or_raises_link_error(text: str) -> None:
    try:
        parsed = parse_expose(text)
    except LinkError as error:
        assert str(error).splitlines() == [str(error)]
    else:
        assert parse_expose(parsed.to_text()) == parsed


@given(st.one_of(st.text(), LINKISH))
def test_resolve_returns_or_raises_a_lookup_error(text: str) -> None:
    try:
        found = CATALOG.resolve(text)
    except (UnknownService, AmbiguousService) as error:
        assert str(error).splitlines() == [str(error)]
    else:
        assert found.matches(text)


@given(SERVICES)
def test_service_round_trip(value: Service) -> None:
    assert parse_link(value.to_text()) == value


@given(EXPOSE_SPECS)
def test_expose_round_trip(value: ExposeSpec) -> None:
    assert parse_expose(value.to_text()) == value


@given(st.builds(Address, HOSTS, PORTS))
def test_address_round_trip(value: Address) -> None:
    assert parse_address(str(value)) == value


# --- UDP forms


def test_udp_link_forms() -> None:
    dns = parse_link("dns=udp:127.0.0.1:53")
    assert dns == Service("dns", 53, Address("127.0.0.1", 53), "udp")
    assert dns.to_text() == "dns=udp:127.0.0.1:53"
    assert parse_link(dns.to_text()) == dns
    assert parse_link("5353=UDP:[::1]:53").to_text() == "5353=udp:[::1]:53"
    assert parse_link("dns=127.0.0.1:53").transport == "tcp"


def test_udp_link_errors_name_the_udp_form() -> None:
    with pytest.raises(LinkError) as error:
        parse_link("dns=udp:")
    message = one_line(error)
    assert "the HOST:PORT after 'udp:' is missing" in message
    assert "udp:HOST:PORT" in message


def test_udp_expose_forms() -> None:
    spec = parse_expose("udp:127.0.0.1:5353=dns")
    assert (spec.bind, spec.port, spec.service, spec.transport) == ("127.0.0.1", 5353, "dns", "udp")
    assert parse_expose(spec.to_text()) == spec
    assert parse_expose("udp:5353=dns").to_text() == "udp:5353=dns"
    assert parse_expose("udp:53").to_text() == "udp:53"
    assert parse_expose("udp:dns").transport == "udp"
    assert parse_expose("5353=dns").transport == "tcp"
    with pytest.raises(LinkError, match="transport in its name"):
        parse_expose("udp:DNS_PORT_53_UDP=udp://10.0.0.1:53")


def test_tcp_and_udp_services_share_a_name_and_resolve_apart() -> None:
    catalog = Catalog((parse_link("dns=10.0.0.2:53"), parse_link("dns=udp:10.0.0.2:53")))
    assert len(catalog) == 2
    assert catalog.resolve("dns").transport == "tcp"
    assert catalog.resolve("dns", "udp").transport == "udp"
    assert catalog.describe() == [
        {"alias": "dns", "port": 53},
        {"alias": "dns", "port": 53, "transport": "udp"},
    ]


def test_a_stream_of_the_other_transport_is_told_in_one_line() -> None:
    udp_only = Catalog((parse_link("dns=udp:10.0.0.2:53"),))
    with pytest.raises(UnknownService) as error:
        udp_only.resolve("dns")
    assert one_line(error) == ("service 'dns' is a UDP service, not TCP; expose it as udp:PORT=dns")
    tcp_only = Catalog((parse_link("redis=10.0.0.5:6379"),))
    with pytest.raises(UnknownService, match="is a TCP service, not UDP; expose it as PORT=redis"):
        tcp_only.resolve("redis", "udp")


def test_udp_link_variables_on_the_server() -> None:
    catalog = links_from_env(
        {"DNS_PORT_53_UDP": "udp://172.17.0.9:53", "DNS_PORT_53_TCP": "tcp://172.17.0.9:53"}
    )
    assert sorted((s.transport, s.to_text()) for s in catalog) == [
        ("tcp", "dns=172.17.0.9:53"),
        ("udp", "dns=udp:172.17.0.9:53"),
    ]
    with pytest.raises(LinkError, match=r"not a udp:// URL; Docker writes it as udp://HOST:PORT"):
        links_from_env({"DNS_PORT_53_UDP": "tcp://172.17.0.9:53"})


def test_udp_link_variables_on_the_client() -> None:
    host, specs = seed_links_from_env(
        {"DNS_PORT_5353_UDP": "udp://192.168.1.52:53", "DNS_PORT_5353_TCP": "tcp://192.168.1.52:53"}
    )
    assert host == "192.168.1.52"
    assert sorted((spec.transport, spec.port, spec.refs) for spec in specs) == [
        ("tcp", 5353, ("dns:53", "53", "dns")),
        ("udp", 5353, ("dns:53", "53", "dns")),
    ]
    assert seed_links_from(["DNS_PORT_53_UDP=udp://10.0.0.1:53"])[1][0].transport == "udp"
