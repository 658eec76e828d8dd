"""Two "hosts" for the end-to-end tests: two network namespaces joined by a veth pair.

Both namespaces and their link exist only for the test that asked for them (the ``two_hosts``
fixture); they are deleted at teardown, whatever happened. Where namespaces cannot be created
(no CAP_SYS_ADMIN), the test is skipped (under CI it fails).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.environment import missing
from tests.integration.support import Processes, require_programs, run_program

_WAIT_FOR_PORT = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit(1)
"""


@dataclass(frozen=True)
class TwoHosts:
    server_ns: str
    client_ns: str
    server_address: str
    client_address: str


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    result = run_program(["ip", *args])
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def wait_for_port_in(netns: str, host: str, port: int, timeout: float = 10.0) -> None:
    argv = [sys.executable, "-c", _WAIT_FOR_PORT, host, str(port), str(timeout)]
    if run_program(argv, timeout=timeout + 5, netns=netns).returncode != 0:
        pytest.fail(f"nothing accepted on {host}:{port} in namespace {netns} within {timeout:g}s")


@contextmanager
def namespaces(processes: Processes) -> Iterator[TwoHosts]:
    """Create the two namespaces; on leaving, stop every program and delete them."""
    require_programs("ip")
    suffix = secrets.token_hex(4)
    server_ns, client_ns = f"amb-srv-{suffix}", f"amb-cli-{suffix}"
    subnet = f"10.201.{secrets.randbelow(256)}"
    created: list[str] = []
    try:
        result = run_program(["ip", "netns", "add", server_ns])
        if result.returncode != 0:
            reason = result.stderr.strip()
            missing(f"cannot create a network namespace (needs CAP_SYS_ADMIN): {reason}")
        created.append(server_ns)
        ip("netns", "add", client_ns)
        created.append(client_ns)
        # The veth pair is made inside the server namespace, its far end moved straight into the
        # client namespace: no interface ever appears in the host's own namespace.
        ip("-n", server_ns, "link", "add", "amb0", "type", "veth", "peer", "name", "amb1")
        ip("-n", server_ns, "link", "set", "amb1", "netns", client_ns)
        for netns, device, host in ((server_ns, "amb0", 1), (client_ns, "amb1", 2)):
            ip("-n", netns, "addr", "add", f"{subnet}.{host}/30", "dev", device)
            ip("-n", netns, "link", "set", device, "up")
            ip("-n", netns, "link", "set", "lo", "up")
        yield TwoHosts(server_ns, client_ns, f"{subnet}.1", f"{subnet}.2")
    finally:
        processes.stop_all()  # nothing may still run in a namespace that is being deleted
        for netns in reversed(created):
            run_program(["ip", "netns", "del", netns])
