"""The protocol core stays free of I/O: no asyncio, socket, ssl or clock in its modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tunnel

SANS_IO = [
    "errors",
    "events",
    "frames",
    "limits",
    "links",
    "messages",
    "session",
    "streams",
    "windows",
    "config",
    "certs",
    "access",
    "auth",
    "binding",
    "statusview",
    "effective",
    "trust",
    "peertext",
    "wording",
]
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "selectors", "threading", "uvloop"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", SANS_IO)
def test_core_module_does_no_io(module: str) -> None:
    found = list(Path(tunnel.__file__).parent.rglob(f"{module}.py"))
    assert len(found) == 1, f"{module}.py is listed as part of the core"
    path = found[0]
    assert not imported_modules(path) & FORBIDDEN


def test_every_core_module_is_checked() -> None:
    # A new module in tunnel/ must be placed on one side: sans-IO core or adapter.
    adapters = {
        "__init__",
        "transport",
        "relay",
        "runtime",
        "metrics",
        "oserrors",
        "cli",
        "tls",
        "tlslayer",
        "reload",
        "httpd",
        "observe",
        "logonce",
        "loglimit",  # a budget of log lines, on the clock
        "pemfiles",  # reads and writes certificate and key files
        "issued",  # reads and appends the CA directory's record of issued serials
        "workers",  # helper processes: started, handed sockets, scraped
        "load",  # reads /proc, sets the process's CPU priority
    }
    present = {p.stem for p in Path(tunnel.__file__).parent.rglob("*.py")}
    assert present - adapters - set(SANS_IO) == set()
