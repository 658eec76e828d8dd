"""New tunnel sessions per second against one server process, two ways side by side.

Each session is what a reconnecting client costs the server's listener: a TCP connect, the
client's hello on the control stream (with its SYN, in one write), the server's welcome read
back, and a close. ``--clients`` loops do this back to back for ``--seconds``; the count of
welcomes read is the rate.

Two server processes are measured in interleaved rounds (gate, direct, gate, direct, ...) so
that the machine's load falls on both alike:

* ``direct``: the listener as it is, without ``--accept-proxy-protocol``: each accepted
  connection's first protocol is the session's own.
* ``gate``: the same server, but every connection first passes a PROXY-header gate
  (:class:`~tunnel.aio.proxyaccept.ProxyAccept` with ``accept=False``), as every connection did
  before the listener skipped it with the flag off.

    python -m tests.bench.sessionrate [--rounds 4] [--seconds 3] [--clients 8]

Prints each round's rate and the server's CPU time per session (read from /proc: on 2 cores
this load generator may itself be the limit, and then the CPU per session still tells the two
apart), and the median of each mode. Everything is on 127.0.0.1; both server
processes are stopped by their own pids at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

from tunnel.protocol.frames import Flags, FrameType, encode_header
from tunnel.protocol.messages import Hello, encode_message

MODES = ("gate", "direct")


def serve(mode: str, port: int) -> None:
    """The server process: ``mode`` says whether the gate stands in front of each session."""
    import logging

    from server.app import Server
    from server.config import ServerConfig
    from tunnel.aio.proxyaccept import ProxyAccept
    from tunnel.operations.runtime import run
    from tunnel.settings.links import Address, Catalog, parse_link

    logging.basicConfig(level=logging.ERROR)
    if mode == "gate":

        def gated(self: Server) -> object:
            config = self.config
            return ProxyAccept(
                self._session_protocol, accept=False, trusted=config.accept_proxy_from,
                timeout=config.handshake_timeout, refuse=self.refused_early,
                pending=self._awaiting_header,
            )  # fmt: skip

        Server._serve_here = gated  # type: ignore[assignment,method-assign]

    async def main() -> None:
        config = ServerConfig(
            listen=Address("127.0.0.1", port), catalog=Catalog((parse_link("svc=127.0.0.1:9"),))
        )
        server = Server(config)
        await server.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    run(main())


HELLO = encode_message(Hello((1, 2), "bench"))
OPENING = encode_header(FrameType.DATA, Flags.SYN, 1, len(HELLO)) + HELLO


async def one_session(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(OPENING)
    seen = b""
    while b'"welcome"' not in seen:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("closed before the welcome")
        seen += chunk
    writer.transport.abort()


async def rate(port: int, clients: int, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while loop.time() < deadline:
            await one_session(port)
            done += 1

    began = loop.time()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return done / (loop.time() - began)


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(mode: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.bench.sessionrate", "--serve", mode, "--port", str(port)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the {mode} server did not start")
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--serve", choices=MODES)
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    servers = {mode: start(mode) for mode in MODES}
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    costs: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for round_ in range(1, args.rounds + 1):
            for mode in MODES:
                process, port = servers[mode]
                cpu = cpu_seconds(process.pid)
                measured = asyncio.run(rate(port, args.clients, args.seconds))
                # The server's own CPU per session: what the listener costs, whoever else
                # (this load generator) shares the machine's cores.
                cost = (cpu_seconds(process.pid) - cpu) / (measured * args.seconds) * 1e6
                rates[mode].append(measured)
                costs[mode].append(cost)
                print(f"round {round_} {mode:6} {measured:8,.0f} sessions/s, server CPU "
                      f"{cost:5.0f} us per session", flush=True)  # fmt: skip
                time.sleep(0.5)  # closed sockets leave TIME_WAIT to the client side only
    finally:
        for process, _ in servers.values():
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    for mode in MODES:
        print(f"median {mode:6} {statistics.median(rates[mode]):8,.0f} sessions/s, server CPU "
              f"{statistics.median(costs[mode]):5.0f} us per session")  # fmt: skip


if __name__ == "__main__":
    main()
