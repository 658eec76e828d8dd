"""The proxy credentials file: one USER:PASSWORD line, warned about when others may read it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunnel.errors import ConfigError
from tunnel.security.proxycreds import load_proxy_credentials


def write(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_one_line_is_the_user_and_the_password(tmp_path: Path) -> None:
    path = write(tmp_path / "creds", "# the corporate proxy\nalice:pa:ss word\n")
    assert load_proxy_credentials(path) == (("alice", "pa:ss word"), None)


def test_a_file_others_may_read_is_used_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "creds", "alice:s3cret\n", 0o644)
    credentials, warning = load_proxy_credentials(path)
    assert credentials == ("alice", "s3cret")
    assert warning == f"proxy credentials file {path} can be read by other users; chmod 600 {path}"


def test_a_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as failed:
        load_proxy_credentials(str(tmp_path / "nope"))
    assert str(failed.value) == (
        f"cannot read proxy credentials file {tmp_path / 'nope'}: no such file; create it with "
        "one USER:PASSWORD line (chmod 600)"
    )


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Is a directory; give a file this user may read"):
        load_proxy_credentials(str(tmp_path))
    if os.geteuid() == 0:
        return  # root reads a file of mode 000 anyway
    path = write(tmp_path / "creds", "alice:s3cret\n", 0o000)
    with pytest.raises(ConfigError, match="Permission denied; give a file this user may read"):
        load_proxy_credentials(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must hold one USER:PASSWORD line; it holds 0"),
        ("a:b\nc:d\n", "must hold one USER:PASSWORD line; it holds 2"),
        ("alice\n", "expected USER:PASSWORD"),
        (":s3cret\n", "expected USER:PASSWORD"),
        ("alice:" + "x" * 256, "at most 255 bytes"),
        (b"\xff\xfe".decode("latin-1"), "not UTF-8"),
    ],
)
def test_a_malformed_file_names_the_form(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "creds"
    path.write_bytes(text.encode("latin-1") if message == "not UTF-8" else text.encode())
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message):
        load_proxy_credentials(str(path))
