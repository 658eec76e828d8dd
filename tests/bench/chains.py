"""The chains under test: how each one is started, and which ports its consumer uses.

Every chain stands for the two-host setup on one machine: a *server half* next to the backends
and a *client half* next to the consumer, with the link between them. ``Setup.hop`` gives the
port the client half dials to reach a server-half port: the port itself, or the port of a delay
proxy standing for a long link. The consumer always talks to ``consumer_ports`` (redis, iperf3).
"""

from __future__ import annotations

import getpass
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .procs import Proc, Procs

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Ports:
    """Fixed ports of a run, below the ephemeral range so outgoing connections never take them."""

    base: int = 21000

    @property
    def redis(self) -> int:  # backends
        return self.base + 379

    @property
    def iperf(self) -> int:
        return self.base + 201

    @property
    def pg(self) -> int:
        return self.base + 432

    @property
    def c_redis(self) -> int:  # where the consumer connects (client half)
        return self.base + 1379

    @property
    def c_iperf(self) -> int:
        return self.base + 1201

    @property
    def c_pg(self) -> int:
        return self.base + 1432

    @property
    def s_redis(self) -> int:  # server halves of per-service pairs
        return self.base + 2379

    @property
    def s_iperf(self) -> int:
        return self.base + 2201

    @property
    def s_pg(self) -> int:
        return self.base + 2432

    @property
    def tunnel(self) -> int:  # ambassador-server
        return self.base + 2700

    @property
    def ssh(self) -> int:
        return self.base + 2022

    @property
    def asyncssh(self) -> int:
        return self.base + 2023

    def proxy(self, index: int) -> int:
        return self.base + 4000 + index

    def chain_ports(self) -> list[int]:
        return [
            self.c_redis,
            self.c_iperf,
            self.c_pg,
            self.s_redis,
            self.s_iperf,
            self.s_pg,
            self.tunnel,
            self.ssh,
            self.asyncssh,
        ]


@dataclass
class Setup:
    procs: Procs
    ports: Ports
    work: Path  # keys, certificates and configuration files of the run
    amb_bin: Path  # folder of ambassador-server and ambassador-client
    max_streams: int
    hop: Callable[[int], int] = lambda port: port
    pg: bool = False  # PostgreSQL runs as a backend (the pgbench columns)


class Chain:
    name = ""
    label = ""
    tls = False  # the link is encrypted and authenticated
    anchor = True  # one of the programs people use today (not direct, not ambassador)

    def unavailable(self, setup: Setup) -> str | None:
        """Why this chain cannot run on this machine, or None."""
        return None

    def tunnel_ports(self, ports: Ports) -> list[int]:
        """The server-half ports the link crosses to: where a delay proxy goes."""
        return [ports.s_redis, ports.s_iperf, ports.s_pg]

    def consumer_ports(self, setup: Setup) -> tuple[int, int]:
        return setup.ports.c_redis, setup.ports.c_iperf

    def pg_port(self, setup: Setup) -> int:
        """Where the consumer reaches PostgreSQL (pgbench) through the chain."""
        return setup.ports.c_pg

    def start(self, setup: Setup) -> list[Proc]:
        raise NotImplementedError

    def _wait_consumer(self, setup: Setup, procs: list[Proc]) -> list[Proc]:
        for port in self.consumer_ports(setup):
            setup.procs.wait_port(port, procs[-1])
        return procs


def _need(*programs: str) -> str | None:
    missing = [p for p in programs if shutil.which(p) is None and not os.path.exists(p)]
    return f"not installed: {', '.join(missing)}" if missing else None


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _tls_pair(work: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1, shared by the TLS anchors."""
    cert, key = work / "anchor-cert.pem", work / "anchor-key.pem"
    if not cert.exists():
        _run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=bench-anchor",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ]
        )
    return cert, key


def _ssh_key(work: Path, name: str) -> Path:
    path = work / name
    if not path.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)])
    return path


class Direct(Chain):
    name, label, anchor = "direct", "direct (no chain)", False

    def tunnel_ports(self, ports: Ports) -> list[int]:
        return [ports.redis, ports.iperf, ports.pg]

    def consumer_ports(self, setup: Setup) -> tuple[int, int]:
        return setup.hop(setup.ports.redis), setup.hop(setup.ports.iperf)

    def pg_port(self, setup: Setup) -> int:
        return setup.hop(setup.ports.pg)

    def start(self, setup: Setup) -> list[Proc]:
        return []


class Socat(Chain):
    name, label = "socat", "socat pair (seed)"

    def unavailable(self, setup: Setup) -> str | None:
        return _need("socat")

    def start(self, setup: Setup) -> list[Proc]:
        p, procs = setup.ports, []
        for backend, server_half, consumer in (
            (p.redis, p.s_redis, p.c_redis),
            (p.iperf, p.s_iperf, p.c_iperf),
            (p.pg, p.s_pg, p.c_pg),
        ):
            far = setup.procs.start(
                f"socat-server-{server_half}",
                [
                    "socat",
                    f"TCP4-LISTEN:{server_half},bind=127.0.0.1,fork,reuseaddr",
                    f"TCP4:127.0.0.1:{backend}",
                ],
            )
            setup.procs.wait_port(server_half, far)
            near = setup.procs.start(
                f"socat-client-{consumer}",
                [
                    "socat",
                    f"TCP4-LISTEN:{consumer},bind=127.0.0.1,fork,reuseaddr",
                    f"TCP4:127.0.0.1:{setup.hop(server_half)}",
                ],
            )
            procs += [far, near]
        return self._wait_consumer(setup, procs)


class Stunnel(Chain):
    name, label, tls = "stunnel", "stunnel pair (TLS)", True

    def unavailable(self, setup: Setup) -> str | None:
        return _need("stunnel", "openssl")

    def start(self, setup: Setup) -> list[Proc]:
        p = setup.ports
        cert, key = _tls_pair(setup.work)
        services = {
            "redis": (p.redis, p.s_redis, p.c_redis),
            "iperf": (p.iperf, p.s_iperf, p.c_iperf),
            "pg": (p.pg, p.s_pg, p.c_pg),
        }
        server_conf = ["foreground = yes", "pid ="]
        client_conf = ["foreground = yes", "pid =", "client = yes"]
        for name, (backend, server_half, consumer) in services.items():
            server_conf += [
                f"[{name}]",
                f"accept = 127.0.0.1:{server_half}",
                f"connect = 127.0.0.1:{backend}",
                f"cert = {cert}",
                f"key = {key}",
            ]
            client_conf += [
                f"[{name}]",
                f"accept = 127.0.0.1:{consumer}",
                f"connect = 127.0.0.1:{setup.hop(server_half)}",
                "verifyPeer = yes",
                f"CAfile = {cert}",
            ]
        (setup.work / "stunnel-server.conf").write_text("\n".join(server_conf) + "\n")
        (setup.work / "stunnel-client.conf").write_text("\n".join(client_conf) + "\n")
        far = setup.procs.start(
            "stunnel-server", ["stunnel", str(setup.work / "stunnel-server.conf")]
        )
        for port in (p.s_redis, p.s_iperf, p.s_pg):
            setup.procs.wait_port(port, far)
        near = setup.procs.start(
            "stunnel-client", ["stunnel", str(setup.work / "stunnel-client.conf")]
        )
        return self._wait_consumer(setup, [far, near])


class Ssh(Chain):
    name, label, tls = "ssh", "ssh -L", True

    def unavailable(self, setup: Setup) -> str | None:
        return _need("ssh", "ssh-keygen", "/usr/sbin/sshd")

    def tunnel_ports(self, ports: Ports) -> list[int]:
        return [ports.ssh]

    def start(self, setup: Setup) -> list[Proc]:
        p = setup.ports
        host_key, client_key = _ssh_key(setup.work, "ssh-host"), _ssh_key(setup.work, "ssh-client")
        authorized = setup.work / "ssh-authorized"
        shutil.copy(client_key.with_suffix(".pub"), authorized)
        authorized.chmod(0o600)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        far = setup.procs.start(
            "sshd",
            [
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
                "/dev/null",
                "-p",
                str(p.ssh),
                "-h",
                str(host_key),
                "-o",
                "ListenAddress=127.0.0.1",
                "-o",
                f"AuthorizedKeysFile={authorized}",
                "-o",
                "StrictModes=no",
                "-o",
                "PermitRootLogin=prohibit-password",
                "-o",
                "UsePAM=no",
                "-o",
                "PidFile=none",
            ],
        )
        setup.procs.wait_port(p.ssh, far)
        near = setup.procs.start(
            "ssh",
            [
                "ssh",
                "-N",
                "-F",
                "/dev/null",
                "-p",
                str(setup.hop(p.ssh)),
                "-i",
                str(client_key),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                f"127.0.0.1:{p.c_redis}:127.0.0.1:{p.redis}",
                "-L",
                f"127.0.0.1:{p.c_iperf}:127.0.0.1:{p.iperf}",
                "-L",
                f"127.0.0.1:{p.c_pg}:127.0.0.1:{p.pg}",
                f"{getpass.getuser()}@127.0.0.1",
            ],
        )
        return self._wait_consumer(setup, [far, near])


class Spiped(Chain):
    name, label, tls = "spiped", "spiped pair", True

    def unavailable(self, setup: Setup) -> str | None:
        return _need("spiped")

    def start(self, setup: Setup) -> list[Proc]:
        p, procs = setup.ports, []
        key = setup.work / "spiped.key"
        if not key.exists():
            key.write_bytes(os.urandom(32))
        for backend, server_half, consumer in (
            (p.redis, p.s_redis, p.c_redis),
            (p.iperf, p.s_iperf, p.c_iperf),
            (p.pg, p.s_pg, p.c_pg),
        ):
            far = setup.procs.start(
                f"spiped-d-{server_half}",
                [
                    "spiped",
                    "-F",
                    "-d",
                    "-s",
                    f"[127.0.0.1]:{server_half}",
                    "-t",
                    f"[127.0.0.1]:{backend}",
                    "-k",
                    str(key),
                ],
            )
            setup.procs.wait_port(server_half, far)
            near = setup.procs.start(
                f"spiped-e-{consumer}",
                [
                    "spiped",
                    "-F",
                    "-e",
                    "-s",
                    f"[127.0.0.1]:{consumer}",
                    "-t",
                    f"[127.0.0.1]:{setup.hop(server_half)}",
                    "-k",
                    str(key),
                ],
            )
            procs += [far, near]
        return self._wait_consumer(setup, procs)


class Haproxy(Chain):
    name, label, tls = "haproxy", "haproxy pair (TLS)", True

    def unavailable(self, setup: Setup) -> str | None:
        return _need("haproxy", "openssl")

    def start(self, setup: Setup) -> list[Proc]:
        p = setup.ports
        cert, key = _tls_pair(setup.work)
        bundle = setup.work / "haproxy.pem"
        bundle.write_text(cert.read_text() + key.read_text())
        lines = [
            "global",
            "  maxconn 8000",
            "defaults",
            "  mode tcp",
            "  timeout connect 5s",
            "  timeout client 120s",
            "  timeout server 120s",
        ]
        for name, backend, server_half, consumer in (
            ("redis", p.redis, p.s_redis, p.c_redis),
            ("iperf", p.iperf, p.s_iperf, p.c_iperf),
            ("pg", p.pg, p.s_pg, p.c_pg),
        ):
            lines += [
                f"listen server-{name}",
                f"  bind 127.0.0.1:{server_half} ssl crt {bundle}",
                f"  server backend 127.0.0.1:{backend}",
                f"listen client-{name}",
                f"  bind 127.0.0.1:{consumer}",
                f"  server link 127.0.0.1:{setup.hop(server_half)} ssl verify required "
                f"ca-file {cert}",
            ]
        config = setup.work / "haproxy.cfg"
        config.write_text("\n".join(lines) + "\n")
        proc = setup.procs.start("haproxy", ["haproxy", "-db", "-f", str(config)])
        return self._wait_consumer(setup, [proc])


class AsyncSsh(Chain):
    name, label, tls = "asyncssh", "asyncssh forward (Python)", True

    def unavailable(self, setup: Setup) -> str | None:
        if importlib.util.find_spec("asyncssh") is None:
            return "asyncssh is not installed in this Python (pip install asyncssh)"
        return _need("ssh-keygen")

    def tunnel_ports(self, ports: Ports) -> list[int]:
        return [ports.asyncssh]

    def start(self, setup: Setup) -> list[Proc]:
        p = setup.ports
        host_key = _ssh_key(setup.work, "assh-host")
        client_key = _ssh_key(setup.work, "assh-client")
        script = str(HERE / "asyncssh_pair.py")
        far = setup.procs.start(
            "asyncssh-server",
            [
                sys.executable,
                script,
                "server",
                str(p.asyncssh),
                str(host_key),
                str(client_key.with_suffix(".pub")),
            ],
        )
        setup.procs.wait_port(p.asyncssh, far)
        near = setup.procs.start(
            "asyncssh-client",
            [
                sys.executable,
                script,
                "client",
                str(setup.hop(p.asyncssh)),
                str(client_key),
                f"{p.c_redis}=127.0.0.1:{p.redis}",
                f"{p.c_iperf}=127.0.0.1:{p.iperf}",
                f"{p.c_pg}=127.0.0.1:{p.pg}",
            ],
        )
        return self._wait_consumer(setup, [far, near])


class Ambassador(Chain):
    name, label, anchor = "ambassador", "ambassador (plaintext)", False
    workers = 1  # processes per role (--workers)

    def tunnel_ports(self, ports: Ports) -> list[int]:
        return [ports.tunnel]

    def unavailable(self, setup: Setup) -> str | None:
        missing = [
            r for r in ("server", "client") if not (setup.amb_bin / f"ambassador-{r}").exists()
        ]
        return f"no ambassador-{'/'.join(missing)} in {setup.amb_bin}" if missing else None

    def server_flags(self, setup: Setup) -> list[str]:
        return []

    def client_flags(self, setup: Setup) -> list[str]:
        return []

    def remote(self, setup: Setup) -> str:
        return f"127.0.0.1:{setup.hop(setup.ports.tunnel)}"

    def start(self, setup: Setup) -> list[Proc]:
        p = setup.ports
        limit = ["--max-streams", str(setup.max_streams), "--workers", str(self.workers)]
        far = setup.procs.start(
            "ambassador-server",
            [
                str(setup.amb_bin / "ambassador-server"),
                "--listen",
                f"127.0.0.1:{p.tunnel}",
                "--link",
                f"redis=127.0.0.1:{p.redis}",
                "--link",
                f"iperf=127.0.0.1:{p.iperf}",
                "--link",
                f"pg=127.0.0.1:{p.pg}",
                *limit,
                # One client holds every connection: its identity's share must fit them too.
                "--max-streams-per-identity",
                str(setup.max_streams),
                *self.server_flags(setup),
            ],
        )
        setup.procs.wait_port(p.tunnel, far)
        near = setup.procs.start(
            "ambassador-client",
            [
                str(setup.amb_bin / "ambassador-client"),
                "--remote",
                self.remote(setup),
                "--expose",
                f"127.0.0.1:{p.c_redis}=redis",
                "--expose",
                f"127.0.0.1:{p.c_iperf}=iperf",
                "--expose",
                f"127.0.0.1:{p.c_pg}=pg",
                *limit,
                *self.client_flags(setup),
            ],
        )
        return self._wait_consumer(setup, [far, near])


class AmbassadorTls(Ambassador):
    name, label, tls = "ambassador-tls", "ambassador (TLS)", True

    def unavailable(self, setup: Setup) -> str | None:
        if reason := super().unavailable(setup):
            return reason
        for role, flag in (("server", "--tls-cert"), ("client", "--tls-ca")):
            help_text = _output([str(setup.amb_bin / f"ambassador-{role}"), "--help"])
            if flag not in help_text:
                return f"ambassador-{role} has no {flag} flag yet"
        certs = setup.work / "ambassador-certs"
        if not (certs / "server.pem").exists():
            result = subprocess.run(
                [
                    str(setup.amb_bin / "ambassador-server"),
                    "certs",
                    "init",
                    str(certs),
                    "--san",
                    "127.0.0.1",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if result.returncode != 0:
                lines = (result.stderr or result.stdout).strip().splitlines()
                why = lines[-1] if lines else f"status {result.returncode}"
                return f"'ambassador-server certs init' failed: {why}"
        missing = [
            f for f in ("ca.pem", "server.pem", "server-key.pem") if not (certs / f).exists()
        ]
        return f"certs init did not write {', '.join(missing)}" if missing else None

    def server_flags(self, setup: Setup) -> list[str]:
        certs = setup.work / "ambassador-certs"
        return ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server-key.pem")]

    def client_flags(self, setup: Setup) -> list[str]:
        return ["--tls-ca", str(setup.work / "ambassador-certs" / "ca.pem")]


class AmbassadorWebSocket(Ambassador):
    """The tunnel inside one WebSocket (what an HTTP ingress passes), no proxy between."""

    name, label = "ambassador-ws", "ambassador (plaintext, inside a WebSocket)"

    def server_flags(self, setup: Setup) -> list[str]:
        return ["--websocket-path", "/ambassador"]

    def remote(self, setup: Setup) -> str:
        return f"ws://127.0.0.1:{setup.hop(setup.ports.tunnel)}/ambassador"


REVERSE_READY_TIMEOUT = 30.0  # seconds for the dialing server to connect and be carried


class AmbassadorReverse(Ambassador):
    """Reverse mode: the client listens for the tunnel (--listen) and the server dials it
    (--connect), the shape of a site behind NAT; the consumer side is the same."""

    name, label = "ambassador-reverse", "ambassador (plaintext, reverse: server dials)"

    def start(self, setup: Setup) -> list[Proc]:
        p = setup.ports
        # No --workers: a listening client and a dialing server run as one process each.
        limit = ["--max-streams", str(setup.max_streams)]
        near = setup.procs.start(
            "ambassador-client",
            [
                str(setup.amb_bin / "ambassador-client"),
                "--listen",
                f"127.0.0.1:{p.tunnel}",
                "--expose",
                f"127.0.0.1:{p.c_redis}=redis",
                "--expose",
                f"127.0.0.1:{p.c_iperf}=iperf",
                "--expose",
                f"127.0.0.1:{p.c_pg}=pg",
                *limit,
            ],
        )
        setup.procs.wait_port(p.tunnel, near)
        far = setup.procs.start(
            "ambassador-server",
            [
                str(setup.amb_bin / "ambassador-server"),
                "--connect",
                f"127.0.0.1:{setup.hop(p.tunnel)}",
                "--link",
                f"redis=127.0.0.1:{p.redis}",
                "--link",
                f"iperf=127.0.0.1:{p.iperf}",
                "--link",
                f"pg=127.0.0.1:{p.pg}",
                *limit,
                "--max-streams-per-identity",
                str(setup.max_streams),
            ],
        )
        self._wait_consumer(setup, [far, near])
        # The client's listeners are open before the server has dialed in, and until it has
        # every consumer connection is reset: a round started then once hung redis-benchmark
        # to its time limit. Ready is when the client has the host (its log says so; probing
        # before would be a reset and a warning of its own) and a request crosses to the
        # backend and back.
        setup.procs.wait_log(near, "tunnel up from", timeout=REVERSE_READY_TIMEOUT)
        setup.procs.wait_pong(p.c_redis, [far, near], timeout=REVERSE_READY_TIMEOUT)
        return [far, near]


class AmbassadorWorkers(Ambassador):
    name, label, workers = "ambassador-w2", "ambassador (plaintext, --workers 2)", 2


class AmbassadorTlsWorkers(AmbassadorTls):
    name, label, workers = "ambassador-tls-w2", "ambassador (TLS, --workers 2)", 2


def _output(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return result.stdout + result.stderr


CHAINS: dict[str, Chain] = {
    chain.name: chain
    for chain in (
        Direct(),
        Socat(),
        Stunnel(),
        Ssh(),
        Spiped(),
        Haproxy(),
        AsyncSsh(),
        Ambassador(),
        AmbassadorTls(),
        AmbassadorWebSocket(),
        AmbassadorReverse(),
        AmbassadorWorkers(),
        AmbassadorTlsWorkers(),
    )
}
# The chains that hold many connections open (measurement 5): the ones built to multiplex.
HOLD_CHAINS = (
    "direct",
    "ssh",
    "ambassador",
    "ambassador-tls",
    "ambassador-reverse",
    "ambassador-w2",
    "ambassador-tls-w2",
)
