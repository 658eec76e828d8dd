"""Fixtures of the interop tests: the Go reference peer, built once per session.

``yamuxpeer`` (``yamuxpeer/main.go``) is hashicorp/yamux driven from flags. It is built with
Debian's Go toolchain and the yamux sources Debian packages (golang-go,
golang-github-hashicorp-yamux-dev), in GOPATH mode, into a temporary directory; tests that need
it are skipped, with the reason, when either is missing or the build fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.environment import missing

GOPATH = Path("/usr/share/gocode")
YAMUX_SOURCES = GOPATH / "src/github.com/hashicorp/yamux"
PEER_SOURCE = Path(__file__).with_name("yamuxpeer") / "main.go"
BUILD_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def yamuxpeer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The path of the built reference peer."""
    go = shutil.which("go")
    if go is None:
        missing("go is not installed (Debian: apt-get install golang-go)")
    if not (YAMUX_SOURCES / "session.go").is_file():
        missing(
            f"hashicorp/yamux sources not found in {YAMUX_SOURCES} "
            "(Debian: apt-get install golang-github-hashicorp-yamux-dev)"
        )
    directory = tmp_path_factory.mktemp("yamuxpeer")
    binary = directory / "yamuxpeer"
    environ = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(directory / "gocache"),
        "GOFLAGS": "",
    }
    try:
        built = subprocess.run(
            [go, "build", "-o", str(binary), str(PEER_SOURCE)],
            env=environ,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        missing(f"building the yamux reference peer took over {BUILD_TIMEOUT:g}s")
    if built.returncode != 0:
        missing(f"building the yamux reference peer failed: {built.stderr.strip()[-2000:]}")
    return binary
