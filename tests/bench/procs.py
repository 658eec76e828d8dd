"""The programs of a benchmark run: started, waited for, accounted and stopped by their own pid.

Every program runs in its own session with its output in a log file of the run's work folder.
Stopping one means SIGTERM to it and to every descendant it forked (each by pid, found through
/proc), a bounded grace period, then SIGKILL for what is left. Nothing is ever stopped by name.

CPU accounting reads /proc/PID/stat of a process tree: utime + stime of every live member plus
cutime + cstime (the children it has already reaped). A delta between two readings therefore
counts the work of fork-per-connection children that came and went in between: once reaped
their time sits in the parent's cutime/cstime, while they live it is in their own fields.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_GRACE = 4.0


class StartError(RuntimeError):
    """A program did not start, or did not open its port in time."""


@dataclass
class Proc:
    name: str
    argv: Sequence[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    state: str
    cpu: float  # seconds: utime + stime
    child_cpu: float  # seconds: cutime + cstime of reaped children
    system_cpu: float  # seconds in the kernel: stime + cstime


def read_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name sits in parentheses and may itself hold spaces or parentheses.
    rest = raw[raw.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in rest[11:15])
    return ProcStat(
        pid=pid,
        ppid=int(rest[1]),
        state=rest[0],
        cpu=(utime + stime) / CLOCK_TICKS,
        child_cpu=(cutime + cstime) / CLOCK_TICKS,
        system_cpu=(stime + cstime) / CLOCK_TICKS,
    )


def all_stats() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := read_stat(int(entry))) is not None:
            stats[stat.pid] = stat
    return stats


def descendants(roots: Iterable[int], stats: Mapping[int, ProcStat] | None = None) -> list[int]:
    """The roots and every process below them, parents before children."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found = [pid for pid in roots if pid in stats]
    index = 0
    while index < len(found):
        found.extend(children.get(found[index], ()))
        index += 1
    return found


def tree_cpu(roots: Iterable[int]) -> float:
    """CPU seconds used so far by the trees under ``roots``, reaped children included."""
    return tree_times(roots)[0]


def tree_times(roots: Iterable[int]) -> tuple[float, float]:
    """CPU seconds, and of them seconds in the kernel, used so far by the trees under
    ``roots``, reaped children included."""
    stats = all_stats()
    pids = descendants(roots, stats)
    total = sum(stats[pid].cpu + stats[pid].child_cpu for pid in pids)
    return total, sum(stats[pid].system_cpu for pid in pids)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of one process, in KiB."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def reset_peak_rss(pid: int) -> bool:
    """Start VmHWM afresh from the current RSS (writing 5 to clear_refs; needs privileges)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port``, read from /proc/net/tcp{,6}.

    Reading the kernel's table rather than connecting keeps the probes out of the programs'
    logs and statistics (a TLS server would log each probe as a failed handshake).
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split(None, 4)
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


class Procs:
    """The programs this run started; all of them are stopped by :meth:`stop_all`."""

    def __init__(self, workdir: Path, environ: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.environ = dict(environ)
        self.running: list[Proc] = []
        self._serial = 0

    def start(self, name: str, argv: Sequence[str], cwd: Path | None = None) -> Proc:
        self._serial += 1
        log = self.workdir / f"{self._serial:03d}-{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environ,
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C on the terminal reaches only this run
            )
        proc = Proc(name=name, argv=list(argv), popen=popen, log=log)
        self.running.append(proc)
        return proc

    def wait_port(self, port: int, proc: Proc, timeout: float = 15.0) -> None:
        """Poll until something listens on ``port``; fail early once ``proc`` has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if listening(port):
                return
            if not proc.alive():
                raise StartError(
                    f"{proc.name} exited with status {proc.popen.returncode} before port {port} "
                    f"opened: {proc.log_tail(4)}"
                )
            time.sleep(0.05)
        raise StartError(
            f"port {port} of {proc.name} not open after {timeout:g}s: {proc.log_tail(4)}"
        )

    def wait_log(self, proc: Proc, text: str, timeout: float = 30.0) -> None:
        """Poll until ``proc``'s log holds ``text``; fail early once it has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in proc.log.read_text(errors="replace"):
                return
            if not proc.alive():
                raise StartError(
                    f"{proc.name} exited with status {proc.popen.returncode} before logging "
                    f"{text!r}: {proc.log_tail(4)}"
                )
            time.sleep(0.05)
        raise StartError(f"{proc.name} did not log {text!r} within {timeout:g}s: "
                         f"{proc.log_tail(4)}")  # fmt: skip

    def wait_pong(self, port: int, procs: Sequence[Proc], timeout: float = 30.0) -> None:
        """Poll until a redis PING through ``port`` is answered ``+PONG``: the whole chain
        carries a request, not just its first listener is open. Fails early once one of
        ``procs`` has exited, and names the last answer otherwise."""
        deadline = time.monotonic() + timeout
        last = "nothing tried"
        while time.monotonic() < deadline:
            for proc in procs:
                if not proc.alive():
                    raise StartError(
                        f"{proc.name} exited with status {proc.popen.returncode} before a PING "
                        f"through port {port} was answered: {proc.log_tail(4)}"
                    )
            last = ping(port, min(2.0, max(0.1, deadline - time.monotonic())))
            if last == "+PONG":
                return
            time.sleep(0.1)
        raise StartError(
            f"no +PONG through port {port} after {timeout:g}s (last: {last}): "
            + " / ".join(f"{proc.name}: {proc.log_tail(2)}" for proc in procs)
        )

    def stop(self, procs: Sequence[Proc]) -> None:
        """SIGTERM each process and its descendants (by pid), then SIGKILL what remains."""
        targets: list[int] = []
        for proc in procs:
            if proc.alive():
                targets.extend(descendants([proc.pid]))
        for pid in targets:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.05, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(_lives(pid) for pid in targets):
            time.sleep(0.05)
        for pid in targets:
            if _lives(pid):
                _signal(pid, signal.SIGKILL)
        for proc in procs:
            if proc.alive():
                proc.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=STOP_GRACE)
            if proc in self.running:
                self.running.remove(proc)

    def stop_all(self) -> None:
        self.stop(list(reversed(self.running)))


def ping(port: int, timeout: float) -> str:
    """One inline PING to 127.0.0.1:``port``: the first line of the answer, or what went wrong
    (a chain whose far half is not there yet resets or closes the connection)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            answer = b""
            while not answer.endswith(b"\r\n") and len(answer) < 512:
                chunk = sock.recv(512)
                if not chunk:
                    return "closed without an answer"
                answer += chunk
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return answer.decode(errors="replace").strip()[:80]


def wait_ports_free(ports: Iterable[int], timeout: float = 10.0) -> list[int]:
    """Wait until nothing listens on ``ports``; returns the ports still busy at the deadline."""
    busy = list(ports)
    deadline = time.monotonic() + timeout
    while busy and time.monotonic() < deadline:
        busy = [port for port in busy if listening(port)]
        if busy:
            time.sleep(0.1)
    return busy


def _lives(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.state not in ("Z", "X")


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
