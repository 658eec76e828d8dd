"""Proxy URLs, --proxy-from-env and no_proxy: what is read, and one line for what is not."""

from __future__ import annotations

import pytest

from tunnel.errors import ConfigError
from tunnel.settings.proxy import Proxy, bypassed, parse_proxy, proxy_route, route_from_environ


def test_http_and_socks5_urls_with_their_default_ports() -> None:
    assert parse_proxy("http://proxy.corp:3128") == Proxy("http", "proxy.corp", 3128)
    assert parse_proxy("http://proxy.corp/") == Proxy("http", "proxy.corp", 80)
    assert parse_proxy("SOCKS5://10.0.0.1") == Proxy("socks5", "10.0.0.1", 1080)
    assert parse_proxy("socks5h://[::1]:1081") == Proxy("socks5", "::1", 1081)
    assert str(Proxy("socks5", "::1", 1081)) == "socks5://[::1]:1081"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("proxy:3128", "names no scheme; write http://HOST:PORT or socks5://HOST:PORT"),
        ("https://proxy:3128", "the https scheme is not supported"),
        ("socks4://proxy:1080", "the socks4 scheme is not supported"),
        ("http://proxy:99999", "is not a proxy URL"),
        ("http://:3128", "names no host"),
        ("http://proxy:3128/path", "a proxy URL has no path"),
    ],
)
def test_what_is_not_a_proxy_url_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_proxy(text)


@pytest.mark.parametrize("text", ["http://alice:s3cret@proxy:3128", "socks5://alice@proxy"])
def test_credentials_in_the_url_are_refused_pointing_to_the_file(text: str) -> None:
    with pytest.raises(ConfigError) as failed:
        parse_proxy(text)
    message = str(failed.value)
    assert "s3cret" not in message
    assert message == (
        "--proxy carries credentials in its URL, where ps and logs show them; remove them and "
        "put USER:PASSWORD in a file given by --proxy-credentials-file (chmod 600)"
    )


def test_the_environment_is_read_only_when_asked() -> None:
    environ = {"HTTPS_PROXY": "http://envproxy:3128"}
    assert proxy_route(None, False, environ) is None
    route = proxy_route(None, True, environ)
    assert route is not None and route.proxy == Proxy("http", "envproxy", 3128)
    assert route.source == "HTTPS_PROXY"


def test_https_proxy_wins_over_all_proxy_and_lower_case_over_upper() -> None:
    environ = {
        "ALL_PROXY": "socks5://a:1",
        "https_proxy": "http://b:2",
        "HTTPS_PROXY": "http://c:3",
    }
    route = route_from_environ(environ)
    assert route is not None and route.proxy == Proxy("http", "b", 2)
    route = route_from_environ({"ALL_PROXY": "socks5://a:1"})
    assert route is not None and route.proxy == Proxy("socks5", "a", 1)
    assert route_from_environ({"http_proxy": "http://only-for-http:3128"}) is None


def test_credentials_in_an_environment_url_are_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^environment variable HTTPS_PROXY carries credentials"):
        route_from_environ({"HTTPS_PROXY": "http://u:p@proxy:3128"})


def test_no_proxy_sends_its_targets_directly() -> None:
    environ = {
        "HTTPS_PROXY": "http://proxy:3128",
        "NO_PROXY": "localhost, .internal.corp,10.0.0.0/8, ::1,Example.ORG",
    }
    route = route_from_environ(environ)
    assert route is not None
    for direct in ("localhost", "a.internal.corp", "internal.corp", "10.1.2.3", "::1",
                   "www.example.org", "EXAMPLE.org."):  # fmt: skip
        assert route.for_target(direct) is None, direct
    for proxied in ("tunnel.example", "notinternal.corp", "11.0.0.1", "example.org.evil"):
        assert route.for_target(proxied) == route.proxy, proxied
    assert bypassed("anything", ("*",))


def test_credentials_are_attached_and_never_shown() -> None:
    route = proxy_route("socks5://proxy:1080", False, {}, ("alice", "s3cret"))
    assert route is not None and route.proxy.credentials == ("alice", "s3cret")
    assert "s3cret" not in repr(route) and "s3cret" not in str(route.proxy)


def test_proxy_and_proxy_from_env_together_is_one_line() -> None:
    with pytest.raises(ConfigError, match="give one"):
        proxy_route("http://p:1", True, {})
