"""The text of a unix socket path (tunnel/settings/unixpath.py) and the ``scheme:`` prefix that
introduces it wherever an endpoint is written."""

from __future__ import annotations

import pytest

from tunnel.settings.links import Address, LinkError, parse_endpoint, parse_expose, parse_link
from tunnel.settings.unixpath import MAX_PATH_BYTES, UnixPath, parse_socket_mode


def longest(prefix: str = "/run/") -> str:
    return prefix + "s" * (MAX_PATH_BYTES - len(prefix))


def test_sun_path_holds_107_bytes_and_the_nul() -> None:
    assert MAX_PATH_BYTES == 107
    assert UnixPath(longest()).path == longest()
    # The limit counts bytes, not characters: 'é' is two of them in UTF-8.
    with pytest.raises(ValueError, match="is 108 bytes long"):
        UnixPath(longest()[:-1] + "é")


@pytest.mark.parametrize("make", [parse_link, parse_expose], ids=["link", "expose"])
def test_a_path_too_long_is_one_line_naming_the_limit(make: object) -> None:
    text = f"pg=unix:{longest()}x" if make is parse_link else f"unix:{longest()}x=pg"
    with pytest.raises(LinkError) as error:
        make(text)  # type: ignore[operator]
    message = str(error.value)
    assert (
        "the socket path is 108 bytes long, and a unix socket path may have at most 107; "
        in message
    )
    assert "use a shorter path" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("@abstract", "abstract sockets are not supported"),
        ("\0abstract", "abstract sockets are not supported"),
        ("relative/app.sock", "is not absolute"),
        ("/run/", "names a directory; add the socket's file name"),
        ("/run/a\x1bb.sock", "holds unprintable characters"),
        ("/run/a\u202eb.sock", "holds unprintable characters"),  # a right-to-left override
        ("", "the socket path is missing"),
    ],
)
def test_what_a_socket_path_may_not_be(path: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        UnixPath(path)
    with pytest.raises(LinkError) as error:
        parse_link(f"pg=unix:{path}")
    # The user's text is shown escaped: a control character never reaches a terminal raw.
    assert "\x1b" not in str(error.value) and "\0" not in str(error.value)
    assert "\u202e" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/app.sock", UnixPath("/run/app.sock")),
        ("UNIX:/run/app.sock", UnixPath("/run/app.sock")),
        ("unix:///run/app.sock", UnixPath("/run/app.sock")),
        ("unixhost:6379", Address("unixhost", 6379)),  # a host name that merely starts so
        ("10.0.0.5:6379", Address("10.0.0.5", 6379)),
    ],
)
def test_the_scheme_prefix_decides_the_form(text: str, expected: object) -> None:
    assert parse_endpoint(text) == expected


def test_a_scheme_always_wins_over_a_host_of_that_name() -> None:
    # "unix:6379" could be host "unix", port 6379; the prefix is read first, and says so.
    with pytest.raises(LinkError, match="'6379' is not absolute"):
        parse_endpoint("unix:6379")


@pytest.mark.parametrize(("text", "mode"), [("0660", 0o660), ("600", 0o600), ("0777", 0o777)])
def test_socket_mode(text: str, mode: int) -> None:
    assert parse_socket_mode(text) == mode


@pytest.mark.parametrize("text", ["", "0", "4777", "0888", "rw-rw----", "06600"])
def test_bad_socket_mode(text: str) -> None:
    with pytest.raises(ValueError, match="give three octal digits like 0660"):
        parse_socket_mode(text)
