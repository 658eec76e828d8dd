"""Certificates changed under a running server: renewed, broken, revoked.

A reload (SIGHUP, or a watched file changing) gives new handshakes the new material while
established sessions carry on, byte for byte; a broken file keeps the running configuration;
a revoked client certificate ends its session and keeps it out.
"""

from __future__ import annotations

import hashlib
import random
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.security.conftest import (
    Certificates,
    Pki,
    Programs,
    RawTunnel,
    Server,
    consumer_receives,
    der_serial,
    echo,
    run_certs,
    tls_connect,
    tls_context,
    wait_up,
)
from tunnel.protocol.messages import Welcome

STREAMS = 10
SIZE = 16 * 1024 * 1024
CHUNK = 256 * 1024


@dataclass
class Transfer:
    """One consumer connection pushing SIZE bytes through the echo and reading them back.

    The last chunk waits for ``rest`` (set when the test is ready), so every stream is still
    open, mid-transfer, whatever the speed of the machine.
    """

    port: int
    seed: int
    rest: threading.Event = field(default_factory=threading.Event)
    sent: str = ""
    received: str = ""
    count: int = 0
    error: str = ""

    def run(self) -> None:
        data = random.Random(self.seed).randbytes(SIZE)
        self.sent = hashlib.sha256(data).hexdigest()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
                writer = threading.Thread(target=self._write, args=(sock, data))
                writer.start()
                digest = hashlib.sha256()
                while chunk := sock.recv(CHUNK):
                    digest.update(chunk)
                    self.count += len(chunk)
                writer.join(timeout=60)
                self.received = digest.hexdigest()
        except OSError as exc:
            self.error = repr(exc)

    def _write(self, sock: socket.socket, data: bytes) -> None:
        with memoryview(data) as view:
            for start in range(0, len(data), CHUNK):
                if start + CHUNK >= len(data):
                    self.rest.wait(timeout=60)
                sock.sendall(view[start : start + CHUNK])
        sock.shutdown(socket.SHUT_WR)


def served_serial(server: Server, pki: Pki) -> int:
    """The serial of the certificate a new TLS connection is shown."""
    with tls_connect(server, tls_context(pki, pki.client("alice"))) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der_serial(der)


def welcomed(server: Server, pki: Pki) -> bool:
    """Whether a new connection, as alice, gets through TLS and the hello to a welcome."""
    with tls_connect(server, tls_context(pki, pki.client("alice"))) as sock:
        raw = RawTunnel(sock)
        raw.hello()
        return isinstance(raw.next_message(), Welcome)


def test_renewal_under_load(
    programs: Programs, certs: Certificates, echo_port: int, tmp_path: Path
) -> None:
    pki = certs.main.copy(tmp_path / "pki")
    server = programs.server(*pki.server_args(), "--link", f"echo=127.0.0.1:{echo_port}")
    alice = programs.good_client(
        server, "--tls-ca", str(pki.ca), *pki.client("alice").args(), identity="alice"
    )
    old = served_serial(server, pki)
    transfers = [Transfer(alice.port, seed) for seed in range(STREAMS)]
    threads = [threading.Thread(target=t.run) for t in transfers]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while sum(t.count for t in transfers) < STREAMS * SIZE // 10:
            assert time.monotonic() < deadline, "the transfers did not get going"
            time.sleep(0.02)
        since = server.program.mark()
        (renewed,) = run_certs(["renew", str(pki.server.cert), "--dir", str(pki.dir)], cwd=tmp_path)
        server.program.send(signal.SIGHUP)
        server.program.wait_for(r"reloaded \(SIGHUP\)", since)
        at_reload = sum(t.count for t in transfers)
    finally:
        for transfer in transfers:
            transfer.rest.set()
        for thread in threads:
            thread.join(timeout=90)
    assert at_reload < STREAMS * SIZE, "the transfers ended before the reload"

    for transfer in transfers:
        assert not transfer.error, transfer.error
        assert transfer.count == SIZE, transfer
        assert transfer.received == transfer.sent, transfer
    assert alice.program.text().count("tunnel up to ") == 1  # one session throughout
    new = served_serial(server, pki)
    assert new != old
    shown = re.search(r"serial (0x[0-9a-f]+)", renewed)
    assert shown is not None and int(shown.group(1), 16) == new, renewed
    assert welcomed(server, pki)


@dataclass
class BrokenReload:
    server: Server
    pki: Pki
    old_serial: int
    since: int


@pytest.fixture(scope="module")
def broken_reload(
    module_programs: Programs,
    certs: Certificates,
    echo_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> BrokenReload:
    """A running server whose server.pem was overwritten with garbage, then sent SIGHUP."""
    pki = certs.main.copy(tmp_path_factory.mktemp("broken") / "pki")
    server = module_programs.server(*pki.server_args(), "--link", f"echo=127.0.0.1:{echo_port}")
    old = served_serial(server, pki)
    since = server.program.mark()
    pki.server.cert.write_text("this is not a certificate\n")
    server.program.send(signal.SIGHUP)
    return BrokenReload(server, pki, old, since)


def test_broken_file_keeps_the_running_configuration(broken_reload: BrokenReload) -> None:
    server, since = broken_reload.server, broken_reload.since
    line = server.program.wait_for(r".*reload \(SIGHUP\) failed.*", since).group(0)
    assert "keeping the running configuration" in line, line
    assert "server.pem" in line, line
    assert "Traceback" not in server.program.text()
    assert served_serial(server, broken_reload.pki) == broken_reload.old_serial
    assert welcomed(server, broken_reload.pki)


def test_broken_file_is_reported_once(broken_reload: BrokenReload) -> None:
    server, since = broken_reload.server, broken_reload.since
    server.program.wait_for(r"reload \(SIGHUP\) failed", since)
    time.sleep(1.6)  # more than the watcher's interval
    failures = [line for line in server.program.lines(since) if "failed, keeping" in line]
    assert len(failures) == 1, failures


def test_revocation_closes_the_session_and_keeps_it_out(
    programs: Programs, certs: Certificates, echo_port: int, tmp_path: Path
) -> None:
    pki = certs.main.copy(tmp_path / "pki")
    run_certs(["revoke", "0x1234", "--dir", str(pki.dir)], cwd=tmp_path)  # crl.pem exists
    server = programs.server(
        *pki.server_args(), "--tls-crl", str(pki.dir / "crl.pem"),
        "--link", f"echo=127.0.0.1:{echo_port}",
    )  # fmt: skip
    ca, since = ["--tls-ca", str(pki.ca)], server.program.mark()
    alice = programs.client(server, *ca, *pki.client("alice").args())
    bob = programs.client(server, *ca, *pki.client("bob").args())
    wait_up(server, alice, "alice", since)
    wait_up(server, bob, "bob", since)
    since, alice_since = server.program.mark(), alice.program.mark()

    (said,) = run_certs(["revoke", str(pki.client("alice").cert), "--dir", str(pki.dir)],
                        cwd=tmp_path)  # fmt: skip
    assert "revoked" in said
    server.program.send(signal.SIGHUP)

    closing = server.program.wait_for(r".*closing session with .*", since).group(0)
    assert f"127.0.0.1:{alice.peer_port} (alice)" in closing, closing
    assert "revoked" in closing
    alice.program.wait_for(r"its certificate was revoked", alice_since)
    again = alice.program.wait_for(r".*WARNING.*retrying", alice_since).group(0)
    assert "the peer says our certificate has been revoked" in again, again
    refused = server.program.wait_for(r".*refused connection from .*", since).group(0)
    assert "the peer's certificate has been revoked" in refused, refused
    assert consumer_receives(alice.port, timeout=1.0) == b""

    assert echo(bob.port) == b"still serving\n"
    assert bob.program.text().count("tunnel up to ") == 1
    assert f"127.0.0.1:{bob.peer_port}" not in "".join(server.program.lines(since))
