"""Imports between the folders of tunnel/ run one way: a new back-edge fails here.

The allowed graph, read from the code (an arrow is "may import")::

    server/, client/   the roles: anything below
         |
       aio/            the asyncio adapter: drives a session over sockets, counts into metrics
       /  \\
 security/  operations/  (neither imports the other)
       \\  /
     settings/         flags, config files, links, how addresses and counts are written
         |
     protocol/         the sans-IO protocol: nothing but itself

and every folder may import ``tunnel.errors``. Nothing in ``tunnel/`` imports a role. When a
lower folder needs something of a higher one, pass it in (a value, a callable) rather than
import it: that is what keeps the protocol testable alone and each folder readable without
the ones above it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tunnel
from tests.tunnel.test_sansio import imported_modules

ROOT = Path(tunnel.__file__).parent
MAY_IMPORT = {
    "protocol": set(),
    "settings": {"protocol"},
    "security": {"settings", "protocol"},
    "operations": {"settings", "protocol"},
    "aio": {"operations", "security", "settings", "protocol"},
}
ROLES = ("server", "client")
SHARED = {"tunnel", "tunnel.errors"}  # the package itself (its version) and the one error module


def folder_modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT)


def test_every_module_lives_in_a_folder_of_the_graph() -> None:
    top = {p.name for p in ROOT.glob("*.py")}
    assert top == {"__init__.py", "errors.py"}, "a new module belongs in one of the folders"
    folders = {p.relative_to(ROOT).parts[0] for p in folder_modules()}
    assert folders == set(MAY_IMPORT), "a new folder needs its place in MAY_IMPORT"


@pytest.mark.parametrize("path", folder_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_down_the_graph(path: Path) -> None:
    folder = path.relative_to(ROOT).parts[0]
    allowed = {folder, *MAY_IMPORT[folder]}
    wrong = set()
    for name in imported_modules(path):
        parts = name.split(".")
        role = parts[0] in ROLES
        if role or (parts[0] == "tunnel" and name not in SHARED and parts[1] not in allowed):
            wrong.add(name)
    assert wrong == set(), f"{folder}/ may import only {sorted(allowed)} and tunnel.errors"


def test_errors_imports_nothing_of_the_project() -> None:
    imported = imported_modules(ROOT / "errors.py")
    assert not {name for name in imported if name.split(".")[0] in {"tunnel", *ROLES}}
