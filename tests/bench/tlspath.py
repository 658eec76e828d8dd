"""The TLS path alone: what ``ssl.MemoryBIO`` costs per GiB, step by step, against the cipher.

``python -m tests.bench.tlspath`` joins two ``ssl.SSLObject`` in memory, made from the contexts
the roles build (``tunnel.security.tls``; TLS 1.3, a P-256 certificate issued on the spot, see
``tests.pki``), and moves bulk data from one to the other the way
:class:`tunnel.aio.tlslayer.TlsLayer` does: the sender writes a 256 KiB chunk and takes the
ciphertext out of its outgoing BIO; the receiver puts it into its incoming BIO and decrypts it
into a buffer, one record per read. It prints the CPU seconds per GiB of each step, and of the
negotiated cipher alone over 16 KiB blocks (``openssl speed``, on the same libcrypto).

What is above the cipher's cost is the price of the ``ssl`` module's memory BIOs: the copies
into and out of them, and a Python call per record. There is no socket and no event loop, but
the figures still drift with the host's load: compare those of one run. With pyOpenSSL
installed, the same path through it is measured too, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.pki import HOST, loopback_pki
from tunnel.security.tls import ServerTls, client_context, server_context

CHUNK = 256 * 1024  # what the tunnel hands the TLS layer at a time
RECORD = 16 * 1024  # the largest plaintext of one TLS record
GIB = 1024**3


class Pair:
    """A client and a server SSLObject, handshaken, each with its two memory BIOs."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        self.client_in, self.client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server_in, self.server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client.wrap_bio(self.client_in, self.client_out, server_hostname=HOST)
        self.server = server.wrap_bio(self.server_in, self.server_out, server_side=True)
        for _ in range(10):
            done = 0
            for tls in (self.client, self.server):
                try:
                    tls.do_handshake()
                    done += 1
                except ssl.SSLWantReadError:
                    pass
            self.server_in.write(self.client_out.read())
            self.client_in.write(self.server_out.read())
            if done == 2:
                return
        raise RuntimeError("the in-memory TLS handshake did not complete")


def time_steps(
    gib: float,
    encrypt: Callable[[bytes], object],
    take_out: Callable[[], bytes],
    put_in: Callable[[bytes], object],
    read_into: Callable[[memoryview], int],
) -> dict[str, float]:
    """CPU seconds per GiB of each step of moving ``gib`` GiB from one end to the other:
    ``encrypt`` a chunk into the sender's outgoing BIO, ``take_out`` its ciphertext, ``put_in``
    the receiver's incoming BIO, and ``read_into`` a buffer until the chunk is back."""
    payload = os.urandom(CHUNK)
    room = memoryview(bytearray(CHUNK))
    steps = dict.fromkeys(("encrypt", "outgoing BIO read", "incoming BIO write", "decrypt"), 0.0)
    clock = time.process_time
    chunks = int(gib * GIB / CHUNK)
    for _ in range(chunks):
        t0 = clock()
        encrypt(payload)
        t1 = clock()
        ciphertext = take_out()
        t2 = clock()
        put_in(ciphertext)
        t3 = clock()
        filled = 0
        while filled < CHUNK:
            filled += read_into(room[filled:])
        t4 = clock()
        steps["encrypt"] += t1 - t0
        steps["outgoing BIO read"] += t2 - t1
        steps["incoming BIO write"] += t3 - t2
        steps["decrypt"] += t4 - t3
        assert room[:16] == payload[:16]
    moved = chunks * CHUNK / GIB
    return {name: spent / moved for name, spent in steps.items()}


def measure(pair: Pair, gib: float) -> dict[str, float]:
    """The ``ssl`` module's path, as the TLS layer drives it."""
    server = pair.server

    def read_into(view: memoryview) -> int:
        return server.read(len(view), view)  # type: ignore[return-value]

    return time_steps(gib, pair.client.write, pair.client_out.read, pair.server_in.write, read_into)


SPEED_NAMES = {
    "TLS_AES_256_GCM_SHA384": "aes-256-gcm",
    "TLS_AES_128_GCM_SHA256": "aes-128-gcm",
    "TLS_CHACHA20_POLY1305_SHA256": "chacha20-poly1305",
}


def cipher_alone(tls_name: str) -> float | None:
    """CPU seconds per GiB to encrypt and to decrypt, from ``openssl speed`` on 16 KiB blocks.

    The ``openssl`` command links the system's libcrypto, which the ``ssl`` module also uses
    (``cryptography`` brings an OpenSSL of its own, so its figure would not compare).
    """
    evp = SPEED_NAMES.get(tls_name)
    if evp is None or shutil.which("openssl") is None:
        return None
    argv = ["openssl", "speed", "-evp", evp, "-bytes", str(RECORD), "-seconds", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False).stdout
    found = re.search(r"^\S+\s+([\d.]+)k\s*$", out, re.MULTILINE)
    if found is None:
        return None
    bytes_per_second = float(found.group(1)) * 1000
    return 2 * GIB / bytes_per_second  # encrypt and decrypt cost about the same


def measure_pyopenssl(files: ServerTls, gib: float) -> dict[str, float] | None:
    """The same path through pyOpenSSL (on the OpenSSL ``cryptography`` ships), if installed."""
    try:
        from OpenSSL import SSL
    except ImportError:
        return None
    server_context = SSL.Context(SSL.TLS_METHOD)
    server_context.use_certificate_file(files.cert)
    server_context.use_privatekey_file(files.key)
    client_context = SSL.Context(SSL.TLS_METHOD)
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    client = SSL.Connection(client_context, None)
    client.set_connect_state()

    def pump(source: SSL.Connection, sink: SSL.Connection) -> int:
        moved = 0
        while True:
            try:
                data = source.bio_read(1 << 20)
            except SSL.WantReadError:
                return moved
            sink.bio_write(data)
            moved += len(data)

    for _ in range(10):
        for end in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                end.do_handshake()
        if not pump(client, server) + pump(server, client):
            break
    if client.get_cipher_name() is None:
        return None

    def take_out() -> bytes:
        ciphertext = b""
        while True:
            try:
                ciphertext += client.bio_read(1 << 20)
            except SSL.WantReadError:
                return ciphertext

    def read_into(view: memoryview) -> int:
        return server.recv_into(view, len(view))

    return time_steps(gib, client.sendall, take_out, server.bio_write, read_into)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="data moved per run")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server_files, client_files = loopback_pki(Path(directory))
        pair = Pair(server_context(server_files), client_context(client_files))
        runs = [measure_pyopenssl(server_files, args.gib) for _ in range(args.repeat)]
    pyopenssl = min(
        (run for run in runs if run is not None), key=lambda s: sum(s.values()), default=None
    )
    name, version, _ = pair.client.cipher() or ("?", "?", 0)
    best = min((measure(pair, args.gib) for _ in range(args.repeat)), key=lambda s: sum(s.values()))
    speeds = [cipher_alone(name) for _ in range(args.repeat)]
    cipher = min((speed for speed in speeds if speed is not None), default=None)
    print(f"{name} ({version}); CPU seconds per GiB, best of {args.repeat}:")
    for step, seconds in best.items():
        print(f"  {step:<20} {seconds:.3f}")
    total = sum(best.values())
    print(f"  {'the ssl path':<20} {total:.3f}")
    if cipher is None:
        print("  (the cipher alone: no 'openssl speed' figure for it here)")
    else:
        print(
            f"  {'the cipher alone':<20} {cipher:.3f}  (openssl speed, encrypt and decrypt, best)"
        )
        print(f"  {'above the cipher':<20} {total - cipher:.3f}")
    if pyopenssl is not None:
        from OpenSSL import SSL

        library = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
        print(f"the same path through pyOpenSSL ({library}), best of {args.repeat}:")
        for step, seconds in pyopenssl.items():
            print(f"  {step:<20} {seconds:.3f}")
        print(f"  {'the pyOpenSSL path':<20} {sum(pyopenssl.values()):.3f}")


if __name__ == "__main__":
    main()
