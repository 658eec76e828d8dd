"""Fixtures shared by every test directory: free ports and waiting for a port to accept."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes the local ports of outgoing connections from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing is bound to right now.

    Taken below the ephemeral range where it can: a port found by binding port 0 comes from
    that range, and between the test letting it go and binding it again, an outgoing
    connection (the test's own tunnel, say) may be given it as its local port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low, _ = _ephemeral_ports()
    if low > 11000:
        for _ in range(100):
            port = random.randrange(10000, low)
            if _bindable(family, host, port):
                return port
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether a TCP connection to host:port is accepted now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until_accepting(
    host: str,
    port: int,
    timeout: float = 10.0,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll host:port until it accepts; fail after ``timeout`` s or once ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_accepts(host, port):
            return
        if alive is not None and not alive():
            pytest.fail(f"the program meant to listen on {host}:{port} exited before it did")
        time.sleep(0.02)
    pytest.fail(f"nothing accepted connections on {host}:{port} within {timeout:g}s")


@pytest.fixture
def free_port() -> Callable[..., int]:
    """``free_port(host="127.0.0.1")``: a port that is free on ``host`` at the time of the call."""
    return pick_free_port


@pytest.fixture
def wait_for_port() -> Callable[..., None]:
    """``wait_for_port(host, port, timeout=10, alive=None)``: a bounded poll until it accepts."""
    return wait_until_accepting
