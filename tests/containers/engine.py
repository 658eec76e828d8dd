"""A private Docker engine for the container tests, started and stopped by the test session.

The engine is Debian's ``docker.io`` (dockerd 20.10), started with everything of its own: a
data root, an exec root, a socket and a pid file in one temporary directory, and a bridge
created here on a subnet no route uses. Tests reach it through ``DOCKER_HOST`` only, so it never
meets another engine on the machine.

It is started with the least it needs: ``--iptables=false --ip-forward=false --ip-masq=false``.
In its default mode dockerd sets the FORWARD policy to DROP, turns on IP forwarding and adds NAT
rules, which would change the network the namespace tests run in beside it. Without them,
containers on one bridge still reach each other (the bridge is one L2 segment), published ports
on 127.0.0.1 work through docker-proxy, and containers reach nothing beyond the machine, which
is what the tests want. Builds that need Debian's mirror use ``--network=host``.

Teardown goes by what this session made: its containers and networks, the daemon by its pid
(and containerd by the pid file the daemon wrote), every mount left under the directory (dockerd
leaves an ``nsfs`` mount behind after SIGTERM), the bridges of its networks, the directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The client: docker.io's own when installed (same version as the daemon), else any on PATH
#: (a newer client negotiates the daemon's API version down).
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
DEBOOTSTRAP = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
IP = shutil.which("ip") or "/usr/sbin/ip"
SUITE = "bookworm"


def unavailable() -> str | None:
    """Why no engine can start here, or None when one can be tried."""
    if os.name != "posix" or not Path("/proc/self/mountinfo").exists():
        return "a Docker engine needs Linux"
    if os.geteuid() != 0:
        return "starting a private Docker engine needs root"
    for program, package in ((DOCKERD, "docker.io"), (DEBOOTSTRAP, "debootstrap")):
        if not Path(program).exists():
            return f"{Path(program).name} is not installed (apt-get install {package})"
    if DOCKER is None:
        return "no docker client (apt-get install docker.io)"
    if not Path(IP).exists():
        return "ip is not installed (apt-get install iproute2)"
    if not Path("/sys/fs/cgroup").is_dir() or not any(Path("/sys/fs/cgroup").iterdir()):
        return "no cgroup file system at /sys/fs/cgroup"
    return None


@dataclass(frozen=True)
class Engine:
    root: Path  # everything the daemon writes
    pid: int
    bridge: str
    subnet: ipaddress.IPv4Network

    @property
    def host(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    def env(self) -> dict[str, str]:
        """The environment for a docker or docker-compose command aimed at this engine."""
        return {
            **os.environ,
            "DOCKER_HOST": self.host,
            # A config directory of its own: no credentials or contexts of the machine's.
            "DOCKER_CONFIG": str(self.root / "client"),
            "DOCKER_BUILDKIT": "0",
            "COMPOSE_DOCKER_CLI_BUILD": "0",
        }

    def docker(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS`` against this engine; a failure shows its stderr."""
        return run([str(DOCKER), *args], self.env(), check, input, timeout, cwd)


def run(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), env=env, input=input, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {result.returncode}:\n{result.stderr[-3000:]}"
        )
    return result


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = run([IP, "-4", "-o", "route", "show", "table", "all"], check=False).stdout
    used = []
    for line in out.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable"):
            word = line.split()[1]
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(word, strict=False))
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    """A /20 in 10.0.0.0/8 that no route of this machine overlaps (the bridge and networks)."""
    used = _used_networks()
    for _ in range(200):
        candidate = ipaddress.IPv4Network((random.randrange(0x0A800000, 0x0AFF0000) & ~0xFFF, 20))
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return candidate
    raise RuntimeError("no free /20 in 10.128.0.0/9 for the test engine's bridge")


def start(timeout: float = 60) -> Engine:
    """Start a private dockerd; raise RuntimeError with its log when it does not answer."""
    root = Path(tempfile.mkdtemp(prefix="amb-docker-"))
    (root / "client").mkdir()
    subnet = _free_subnet()
    bridge_net, pool = list(subnet.subnets(new_prefix=21))
    bridge = f"ambd{os.getpid() % 100000}"
    gateway = f"{bridge_net.network_address + 1}/{bridge_net.prefixlen}"
    run([IP, "link", "add", "name", bridge, "type", "bridge"])
    try:
        run([IP, "addr", "add", gateway, "dev", bridge])
        run([IP, "link", "set", bridge, "up"])
        log = open(root / "dockerd.log", "w")  # noqa: SIM115 - the daemon keeps writing it
        daemon = subprocess.Popen(
            [
                DOCKERD,
                f"--data-root={root / 'data'}",
                f"--exec-root={root / 'exec'}",
                f"--host={'unix://' + str(root / 'docker.sock')}",
                f"--pidfile={root / 'docker.pid'}",
                f"--bridge={bridge}",
                f"--default-address-pool=base={pool},size=24",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--containerd-namespace=ambassador-tests",
                "--containerd-plugins-namespace=ambassador-tests-plugins",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
    except BaseException:
        run([IP, "link", "del", bridge], check=False)
        shutil.rmtree(root, ignore_errors=True)
        raise
    engine = Engine(root, daemon.pid, bridge, bridge_net)
    deadline = time.monotonic() + timeout
    while engine.docker("version", check=False, timeout=20).returncode != 0:
        if daemon.poll() is not None or time.monotonic() > deadline:
            reason = (root / "dockerd.log").read_text()[-2000:]
            stop(engine)
            raise RuntimeError(f"dockerd did not start:\n{reason}")
        time.sleep(0.3)
    return engine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def _stop_pid(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _mounts_under(root: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def stop(engine: Engine) -> None:
    """Remove what the engine made and stop it, whatever state it is in."""
    bridges = {engine.bridge}
    if _alive(engine.pid):
        ids = engine.docker("ps", "-aq", check=False, timeout=30).stdout.split()
        if ids:
            engine.docker("rm", "-f", "-v", *ids, check=False, timeout=120)
        networks = engine.docker("network", "ls", "-q", "--no-trunc", check=False).stdout.split()
        bridges |= {f"br-{network[:12]}" for network in networks}
        engine.docker("network", "prune", "-f", check=False, timeout=60)
    containerd = engine.root / "exec" / "containerd" / "containerd.pid"
    _stop_pid(engine.pid, grace=20)
    with contextlib.suppress(OSError, ValueError):
        _stop_pid(int(containerd.read_text()), grace=10)
    for point in _mounts_under(engine.root):
        run(["umount", "-l", point], check=False)
    links = run([IP, "-o", "link", "show"], check=False).stdout
    for bridge in bridges:
        if f": {bridge}:" in links or f": {bridge}@" in links:
            run([IP, "link", "del", bridge], check=False)
    shutil.rmtree(engine.root, ignore_errors=True)


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (so that a local mirror is used here too)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for stanza in sources.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
            )
            if "security" not in fields.get("URIs", "") and fields.get("URIs"):
                return fields["URIs"].split()[0]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            words = line.split()
            if words[:1] == ["deb"] and "security" not in line:
                return next(w for w in words[1:] if not w.startswith("["))
    return "http://deb.debian.org/debian"


#: What the base image holds: a minimal Debian with Python 3.11 and its venv module, which is
#: what deploy/Dockerfile's BASE needs. Pruned like Debian's own images (no apt lists, docs).
BASE_PACKAGES = ("python3", "python3-venv")
PRUNED = (
    *("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"),
    *("usr/share/doc/*", "usr/share/man/*", "usr/share/locale/*"),
)


def base_rootfs_tar(cache: Path | None, workdir: Path) -> Path:
    """A tarball of the base image's root file system: from ``cache`` when it is there and less
    than a week old, else made with debootstrap (about a minute) and kept in ``cache``."""
    name = f"debian-{SUITE}-minbase-{'-'.join(BASE_PACKAGES)}-2.tar"  # -2: locales pruned
    if cache is not None:
        cached = cache / name
        if cached.exists() and time.time() - cached.stat().st_mtime < 7 * 86400:
            return cached
    rootfs = workdir / "rootfs"
    mirror = debian_mirror()
    run(
        [
            DEBOOTSTRAP,
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(rootfs),
            mirror,
        ],
        timeout=600,
    )
    for pruned in PRUNED:
        for entry in rootfs.glob(pruned):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    tar = workdir / name
    run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], timeout=300)
    shutil.rmtree(rootfs, ignore_errors=True)
    if cache is not None:
        with contextlib.suppress(OSError):
            cache.mkdir(parents=True, exist_ok=True)
            partial = cache / f"{name}.partial"
            shutil.copyfile(tar, partial)
            partial.replace(cache / name)
            return cache / name
    return tar
