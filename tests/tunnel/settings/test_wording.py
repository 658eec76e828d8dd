"""Counts agree with their number, and IPv6 addresses are bracketed, in every line."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tunnel.aio.transport import format_peer
from tunnel.errors import ConfigError
from tunnel.security.auth import load_tokens
from tunnel.security.pemfiles import read_file
from tunnel.security.trust import load_crls, load_trust
from tunnel.settings.config import load_config_file
from tunnel.settings.links import Address
from tunnel.settings.wording import counted, hostport, rate, size


@pytest.mark.parametrize(
    ("n", "expected"), [(0, "0 sessions"), (1, "1 session"), (2, "2 sessions")]
)
def test_counted_agrees_with_the_number(n: int, expected: str) -> None:
    assert counted(n, "session") == expected


def test_counted_takes_an_irregular_plural() -> None:
    assert counted(1, "helper process", "helper processes") == "1 helper process"
    assert counted(3, "helper process", "helper processes") == "3 helper processes"


@pytest.mark.parametrize(
    ("host", "expected"),
    [("::1", "[::1]:16393"), ("fe80::1%lo", "[fe80::1%lo]:16393"),
     ("127.0.0.1", "127.0.0.1:16393"), ("db.example", "db.example:16393")],
)  # fmt: skip
def test_every_formatter_brackets_ipv6(host: str, expected: str) -> None:
    assert hostport(host, 16393) == expected
    assert format_peer((host, 16393, 0, 0)) == expected
    if "%" not in host:
        assert str(Address(host, 16393)) == expected


READERS: dict[str, Callable[[Path], object]] = {
    "config file ": load_config_file,
    "token file ": lambda path: load_tokens(str(path)),
    "CA file ": lambda path: load_trust(str(path), None),
    "CRL ": lambda path: load_crls(str(path)),
    "": read_file,  # a key or certificate named by its option
}


@pytest.mark.parametrize("what", list(READERS))
def test_every_file_a_user_names_is_unreadable_in_the_same_words(tmp_path: Path, what: str) -> None:
    read = READERS[what]
    gone, folder, locked = tmp_path / "gone", tmp_path / "folder", tmp_path / "locked"
    folder.mkdir()
    locked.write_text("x")
    locked.chmod(0)
    cases = [(gone, "no such file"), (folder, "is a directory, expected a file")]
    if os.geteuid() != 0:  # root reads any file
        cases.append((locked, "permission denied"))
    for path, why in cases:
        with pytest.raises(ConfigError) as raised:
            read(path)
        assert str(raised.value) == f"cannot read {what}{path}: {why}"


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 2**30, "5.0 GiB")],
)
def test_sizes_are_written_in_binary_units(n: int, expected: str) -> None:
    assert size(n) == expected
    assert rate(n) == expected + "/s"
