"""The protocol core stays free of I/O: a folder rule, not a list of files.

Everything in ``tunnel/protocol/`` is sans-IO (bytes and the current time in, events and bytes
out): it imports no asyncio, socket, ssl, clock, threads or event loop, and nothing of the
project but ``tunnel.errors``. A module added to that folder is checked the day it is added.
The settings (``tunnel/settings/``) are parsed, never run, so they keep to the same imports;
in ``tunnel/security/`` only the TLS contexts (``tls.py``) speak to ``ssl``. The asyncio
adapter (``tunnel/aio/``) does not load ``cryptography``: the certificate code is the roles'.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tunnel

ROOT = Path(tunnel.__file__).parent
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "selectors", "threading", "uvloop"}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, by its full dotted name, at any depth of the file."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import; write tunnel.FOLDER.MODULE"
            assert node.module is not None
            names.add(node.module)
    return names


def modules_of(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules_of("protocol"), ids=lambda p: p.name)
def test_protocol_module_does_no_io(path: Path) -> None:
    imported = imported_modules(path)
    assert not {name.split(".")[0] for name in imported} & FORBIDDEN
    project = {name for name in imported if name.split(".")[0] == "tunnel"}
    outside = project - {"tunnel.errors"} - {n for n in project if n.startswith("tunnel.protocol.")}
    assert outside == set(), f"the protocol imports only itself and tunnel.errors: {outside}"


@pytest.mark.parametrize("path", modules_of("settings"), ids=lambda p: p.name)
def test_settings_module_does_no_io(path: Path) -> None:
    assert not {name.split(".")[0] for name in imported_modules(path)} & FORBIDDEN


@pytest.mark.parametrize("path", modules_of("security"), ids=lambda p: p.name)
def test_only_the_tls_contexts_import_ssl(path: Path) -> None:
    allowed = {"ssl"} if path.name == "tls.py" else set()
    assert not {name.split(".")[0] for name in imported_modules(path)} & (FORBIDDEN - allowed)


def test_the_protocol_folder_is_not_empty() -> None:
    # A rule over an empty folder would pass for the wrong reason (the folder moved, say).
    assert {"frames.py", "session.py", "windows.py"} <= {p.name for p in modules_of("protocol")}


def test_the_adapter_does_not_load_cryptography() -> None:
    code = (
        "import sys\n"
        "import tunnel.aio.relay, tunnel.aio.tlslayer, tunnel.aio.transport\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert loaded.strip() == "[]"
