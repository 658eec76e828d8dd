"""What unauthenticated peers cost a real ambassador-server, measured.

Run ``python -m tests.security.attack_budget``.
For plaintext and for TLS (without client certificates, so anyone may handshake), it starts a
server on loopback with an honest client connected, measures the server's idle resident memory,
then attacks it from this process:

1. 1,000 connections that each send the start of a hello (plaintext: a 12-byte header and a few
   bytes; TLS: 5 bytes of a ClientHello) and then nothing, from one address, then from 100
   loopback addresses; RSS while they are open, then after they closed;
2. the big-frame attack: 4 connections each announcing a 128 MiB Data frame and sending 256 KiB;

and prints a table: RSS against idle, descriptors, connections held, log bytes per attacking
connection. It exits non-zero when a bound of ``docs/security.md`` is not met (open: within
64 MiB of idle; after: within 8 MiB; log: a few KiB per connection). Bounded: about a minute.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.security import attack
from tests.security.attack import KIB, MIB

OPEN_BOUND = 64 * MIB
AFTER_BOUND = 8 * MIB
LOG_BOUND = 2 * KIB  # log bytes per attacking connection


@dataclass
class Row:
    mode: str
    attack: str
    idle: int
    during: int | None
    after: int
    held: int | None
    fds: int | None
    log_per_conn: float

    def ok(self) -> bool:
        during_ok = self.during is None or self.during - self.idle <= OPEN_BOUND
        return (
            during_ok and self.after - self.idle <= AFTER_BOUND and self.log_per_conn <= LOG_BOUND
        )


def half_open(server: attack.Target, count: int, spread: int) -> Row:
    payload = attack.CLIENT_HELLO_START if server.tls else attack.HELLO_START
    idle = attack.settled_rss(server.pid)
    log = server.server.log_size()
    base_fds = attack.descriptors(server.pid)
    held, _ = attack.open_half_hellos(server.port, count, payload, spread)
    during = attack.settled_rss(server.pid)
    fds = attack.descriptors(server.pid) - base_fds
    attack.close_all(held)
    attack.wait_for_descriptors(server.pid, base_fds)
    time.sleep(1.5)  # the heap goes back to the kernel a second after the last close
    after = attack.settled_rss(server.pid)
    per_conn = (server.server.log_size() - log) / count
    what = f"{count} half-open, {spread} address{'es' if spread > 1 else ''}"
    mode = "TLS" if server.tls else "plaintext"
    return Row(mode, what, idle, during, after, len(held), fds, per_conn)


def big_frames(server: attack.Target, rounds: int = 2) -> Row:
    idle = attack.settled_rss(server.pid)
    log = server.server.log_size()
    for _ in range(rounds):
        attack.big_frames(server.port, server.tls, conns=4, size=256 * KIB)
    time.sleep(1.5)
    after = attack.settled_rss(server.pid)
    per_conn = (server.server.log_size() - log) / (4 * rounds)
    mode = "TLS" if server.tls else "plaintext"
    what = f"{rounds}x 4 conns: 128 MiB header + 256 KiB"
    return Row(mode, what, idle, None, after, None, None, per_conn)


def table(rows: list[Row]) -> str:
    def mib(value: int | None, idle: int) -> str:
        return "" if value is None else f"{value / MIB:.1f} ({(value - idle) / MIB:+.1f})"

    head = ("mode", "attack", "idle MiB", "open MiB (vs idle)", "after MiB (vs idle)",
            "held", "fds", "log B/conn", "ok")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r.mode, r.attack, f"{r.idle / MIB:.1f}", mib(r.during, r.idle),
                 mib(r.after, r.idle), "" if r.held is None else str(r.held),
                 "" if r.fds is None else str(r.fds), f"{r.log_per_conn:.0f}",
                 "yes" if r.ok() else "NO")  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.security.attack_budget")
    parser.add_argument("--count", type=int, default=1000, help="half-open connections")
    parser.add_argument("--modes", default="plaintext,tls", help="plaintext,tls")
    args = parser.parse_args(argv)
    limit = attack.raise_nofile(args.count + 1024)
    if limit < args.count + 100:
        print(f"the descriptor limit is {limit}; raise it (ulimit -n) or lower --count")
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="attack-budget-") as directory:
        for mode in args.modes.split(","):
            tls = mode.strip() == "tls"
            with attack.target(Path(directory) / mode, tls) as server:
                rows.append(half_open(server, args.count, spread=1))
                rows.append(half_open(server, args.count, spread=100))
                rows.append(big_frames(server))
                if server.server.popen.poll() is not None:
                    print(f"the {mode} server died:\n{server.server.text()[-2000:]}")
                    return 1
    print(table(rows))
    print(
        f"\nbounds: open within {OPEN_BOUND // MIB} MiB of idle, after within "
        f"{AFTER_BOUND // MIB} MiB, log at most {LOG_BOUND} bytes per attacking connection"
    )
    return 0 if all(row.ok() for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
