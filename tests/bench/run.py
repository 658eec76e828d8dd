"""The benchmark run: backends, every chain interleaved over several rounds, then the report.

    python -m tests.bench [--chains a,b] [--rounds N] [--quick] [--out docs/]

Round 1 runs every chain once in the order given; each later round runs them again in another
(seeded, shuffled) order, so slow drifts of the machine spread over all chains. For each chain
and round: start it, take the measurements, stop it; then start it again with a delay proxy in
the middle of its link for the long-link measurements, and stop it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tests.progress import Progress

from . import postgres, report
from .chains import CHAINS, HOLD_CHAINS, Chain, Ports, Setup
from .measure import ChainRun, Sample, Settings
from .procs import Proc, Procs, StartError, listening, wait_ports_free

ROOT = Path(__file__).resolve().parents[2]
FILE_LIMIT = 65536  # wanted: room above the held connections (the hard limit may cap it)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    chains = args.chains
    settings = Settings.quick() if args.quick else Settings()
    settings = dataclasses.replace(
        settings, conns=args.conns or settings.conns, paced_hold=args.hold_paced
    )
    rounds = args.rounds or (1 if args.quick else 3)
    limit = _raise_file_limit()
    if limit < settings.conns + 1000:
        print(
            f"note: open files limited to {limit}; holding {settings.conns} connections may fail",
            file=sys.stderr,
        )

    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="ambassador-bench-"))
    procs = Procs(work, _environ())
    ports = Ports(args.port_base)
    setup = Setup(
        procs=procs,
        ports=ports,
        work=work,
        amb_bin=args.amb_bin,
        max_streams=max(8192, settings.conns + 1000),
    )
    samples: dict[str, list[Sample]] = {name: [] for name in chains}
    unavailable: dict[str, str] = {}
    orders: list[list[str]] = []
    load_before = _loadavg()
    started = time.monotonic()
    pg_home: Path | None = None
    try:
        busy = [p for p in (ports.redis, ports.iperf, *ports.chain_ports()) if listening(p)]
        if busy:
            print(f"ports {busy} are in use: pick another --port-base", file=sys.stderr)
            return 2
        backends = _start_backends(procs, ports, settings)
        if why := postgres.unavailable():
            print(f"pgbench columns left out: {why}", flush=True)
        else:
            try:
                _, pg_home = postgres.start(procs, ports.pg)
                setup.pg = True
            except (StartError, subprocess.SubprocessError, OSError) as exc:
                print(f"pgbench columns left out: PostgreSQL did not start: {exc}", flush=True)
        for name in chains:
            if why := CHAINS[name].unavailable(setup):
                unavailable[name] = why
                print(f"{name}: not available: {why}", flush=True)
        runnable = [name for name in chains if name not in unavailable]
        shuffle = random.Random(args.seed)
        for number in range(rounds):
            order = list(runnable)
            if number:
                shuffle.shuffle(order)
            orders.append(order)
        # On a terminal, one status line says what runs, what is left and for how long.
        progress = Progress(
            [(f"round {n + 1}/{rounds}: {name}", name) for n, o in enumerate(orders) for name in o]
        )
        for number, order in enumerate(orders):
            for name in order:
                backends = _check_backends(procs, ports, settings, backends)
                progress.clear()
                print(f"round {number + 1}/{rounds}: {name}", flush=True)
                progress.next()
                try:
                    sample = run_chain(CHAINS[name], setup, settings, progress.phase)
                except Exception as exc:  # reported as this chain's failure; the run goes on
                    sample = Sample(failures={"ping_rps": f"benchmark error: {exc!r}"})
                    progress.clear()
                    traceback.print_exc()
                samples[name].append(sample)
                progress.clear()
                _echo(name, sample)
                progress.draw()
        progress.close()
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was measured so far", file=sys.stderr)
    finally:
        procs.stop_all()
        if pg_home is not None:
            shutil.rmtree(pg_home, ignore_errors=True)
    elapsed = time.monotonic() - started
    summary = report.Summary.of(chains, samples, unavailable, rounds)
    machine = _machine(setup, load_before, _loadavg(), elapsed)
    settings_text = _settings_text(settings, rounds, orders, setup)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    text = report.markdown(summary, machine, settings_text, settings.conns, "benchmarks.png")
    (out / "benchmarks.md").write_text(text)
    try:
        report.plot(summary, out / "benchmarks.png")
        wrote = f"{out / 'benchmarks.md'} and {out / 'benchmarks.png'}"
    except ImportError:
        wrote = f"{out / 'benchmarks.md'} (no plot: matplotlib is not installed)"
    _print_ratios(summary)
    print(f"\nwrote {wrote} ({elapsed:.0f} s)")
    if args.keep_logs:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _quiet(detail: str) -> None:
    """Where a phase is told when no one shows progress."""


def run_chain(
    chain: Chain, setup: Setup, settings: Settings, phase: Callable[[str], None] = _quiet
) -> Sample:
    """One round of one chain: the loopback measurements, then the long-link ones; ``phase``
    is told what runs now."""
    setup.hop = lambda port: port
    sample = _with_chain(chain, setup, settings, long_link=False, phase=phase)
    ports = chain.tunnel_ports(setup.ports)
    mapping = {port: setup.ports.proxy(index) for index, port in enumerate(ports)}
    proxy = setup.procs.start(
        "delayproxy",
        [
            sys.executable,
            str(Path(__file__).with_name("delayproxy.py")),
            "--delay",
            "0.025",
            *[arg for port, via in mapping.items() for arg in ("--map", f"{via}=127.0.0.1:{port}")],
        ],
    )
    try:
        for via in mapping.values():
            setup.procs.wait_port(via, proxy)
        setup.hop = lambda port: mapping.get(port, port)
        phase("50 ms link: starting")
        far = _with_chain(chain, setup, settings, long_link=True, phase=phase)
        sample.values.update(far.values)
        sample.failures.update(far.failures)
        sample.notes += [f"50 ms link: {note}" for note in far.notes]
    except StartError as exc:
        for key in ("wan_ttfb_ms", "wan_mbps", "wan_down_mbps"):
            sample.failures[key] = f"delay proxy: {exc}"
    finally:
        setup.procs.stop([proxy])
        setup.hop = lambda port: port
    return sample


def _with_chain(
    chain: Chain,
    setup: Setup,
    settings: Settings,
    long_link: bool,
    phase: Callable[[str], None] = _quiet,
) -> Sample:
    keys = (
        ["wan_ttfb_ms", "wan_mbps", "wan_down_mbps"]
        if long_link
        else ["ping_rps", "set_rps", "iperf1_gbps", "iperf8_gbps", "cpu_s_per_gib", "bulk_p99_ms"]
        + (["hold_p99_ms"] if chain.name in HOLD_CHAINS else [])
    )
    try:
        started = chain.start(setup)
    except (StartError, subprocess.SubprocessError, OSError) as exc:
        setup.procs.stop(
            [p for p in setup.procs.running if p.name != "delayproxy" and p not in _backends(setup)]
        )
        sample = Sample()
        for key in keys:
            sample.failures[key] = f"failed to start: {exc}"
        return sample
    try:
        time.sleep(0.3)  # let the client half finish its own connection set-up
        redis_port, iperf_port = chain.consumer_ports(setup)
        pg_port = chain.pg_port(setup) if setup.pg else None
        run = ChainRun(started, redis_port, iperf_port, settings, pg_port)
        if long_link:
            phase("50 ms link: first byte and throughput")
            run.long_link()
        else:
            phase("redis and iperf3 throughput")
            run.throughput()
            phase("CPU per GiB")
            run.cpu_per_gib()
            phase("small requests beside bulk")
            run.fairness()
            if chain.name in HOLD_CHAINS:
                phase(f"{settings.conns:,} held connections")
                run.many_connections()
        _ambassador_log_notes(chain, started, run.sample)
        return run.sample
    finally:
        setup.procs.stop(list(reversed(started)))
        busy = wait_ports_free(setup.ports.chain_ports())
        if busy:
            print(
                f"warning: ports {busy} still listen after stopping {chain.name}", file=sys.stderr
            )


def _backends(setup: Setup) -> list[Proc]:
    names = ("redis-server", "iperf3-server", "postgres")
    return [p for p in setup.procs.running if p.name in names]


def _start_backends(procs: Procs, ports: Ports, settings: Settings) -> list[Proc]:
    redis = procs.start(
        "redis-server",
        [
            "redis-server",
            "--port",
            str(ports.redis),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--maxclients",
            str(settings.conns + 2000),
        ],
    )
    iperf = procs.start(
        "iperf3-server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(ports.iperf)]
    )
    procs.wait_port(ports.redis, redis)
    procs.wait_port(ports.iperf, iperf)
    return [redis, iperf]


def _check_backends(
    procs: Procs, ports: Ports, settings: Settings, backends: list[Proc]
) -> list[Proc]:
    if all(p.alive() for p in backends):
        return backends
    for proc in backends:
        print(
            f"warning: backend {proc.name} exited ({proc.log_tail(2)}); restarting", file=sys.stderr
        )
    procs.stop(backends)
    return _start_backends(procs, ports, settings)


_LOG_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:,.]+\s*")


def _ambassador_log_notes(chain: Chain, procs: list[Proc], sample: Sample) -> None:
    """Warnings and errors the ambassador processes logged, counted by their text."""
    if not chain.name.startswith("ambassador"):
        return
    for proc in procs:
        counts: dict[str, int] = {}
        try:
            lines = proc.log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if _LOG_LEVEL.search(line):
                text = _TIMESTAMP.sub("", line)
                # Stream ids and peer ports vary line to line; other numbers (limits) stay.
                text = re.sub(r"\b\d+\.\d+\.\d+\.\d+:\d+\b", "ADDR", text)
                text = re.sub(r"\bstream \d+", "stream N", text)[:300]
                counts[text] = counts.get(text, 0) + 1
        for text, count in sorted(counts.items(), key=lambda kv: -kv[1])[:5]:
            sample.notes.append(f"{proc.name} log: {count} x {text}")


def _echo(name: str, sample: Sample) -> None:
    shown = ", ".join(f"{k}={v:,.3g}" for k, v in sample.values.items() if not k.startswith("rss:"))
    print(f"  {shown}", flush=True)
    for key, why in sample.failures.items():
        print(f"  FAILED {key}: {why}", flush=True)
    for note in sample.notes:
        print(f"  note: {note}", flush=True)


def _print_ratios(summary: report.Summary) -> None:
    rows = report.ratio_lines(summary)
    if not rows:
        return
    print("\nambassador against each anchor (times better; above 1: ahead)")
    current = None
    for ours, anchor, key, ratio in rows:
        if (ours, anchor) != current:
            current = (ours, anchor)
            print(f"  {ours} vs {anchor}:")
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        print(f"    {report.METRICS[key].title:<45} {shown}")


def _settings_text(settings: Settings, rounds: int, orders: list[list[str]], setup: Setup) -> str:
    lines = [
        f"Rounds: {rounds}; figures are medians over the rounds. Orders: "
        + "; ".join(f"{i + 1}: {', '.join(order)}" for i, order in enumerate(orders))
        + ".",
        f"pgbench -S (select-only, scale 1) for {settings.pgbench_seconds:g} s each: -c 1; "
        "-c 8 -j 2; -C -c 8 -j 2 (a new connection each transaction). "
        f"redis-benchmark: PING -n {settings.ping_requests:,} -c 50; SET -n "
        f"{settings.set_requests:,} -c 20 -k 0. iperf3: -t {settings.iperf_seconds:g}; CPU per "
        f"GiB over -n {settings.cpu_bytes / 2**20:,.0f} MiB. PING series: "
        f"{settings.series_seconds:g} s. Held connections: {settings.conns:,} (ambassador runs "
        f"with --max-streams and --max-streams-per-identity {setup.max_streams} so that they fit"
        + ("; each PINGs once as it opens, at most 100 at once" if settings.paced_hold else "")
        + "). 50 ms link: "
        f"{settings.wan_samples} fresh connections, iperf3 -t {settings.wan_iperf_seconds:g}.",
        "The machine is shared: other work ran at the same time (see the load averages); "
        "figures move by 20% or more between runs.",
    ]
    return "\n\n".join(lines)


def _machine(
    setup: Setup, load_before: str, load_after: str, elapsed: float
) -> list[tuple[str, str]]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    amb = _first_line([str(setup.amb_bin / "ambassador-server"), "--version"])
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("nproc", _first_line(["nproc"])),
        ("CPU", cpu),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("ambassador", amb),
        ("uvloop", _module_version("uvloop")),
        ("asyncssh", _module_version("asyncssh")),
        ("redis", _first_line(["redis-server", "--version"])),
        ("iperf3", _first_line(["iperf3", "--version"])),
        ("socat", _grep(["socat", "-V"], "socat version")),
        ("stunnel", _grep(["stunnel", "-version"], "stunnel ")),
        ("OpenSSH", _first_line(["ssh", "-V"])),
        ("spiped", _first_line(["spiped", "-v"])),
        ("HAProxy", _first_line(["haproxy", "-v"])),
        ("OpenSSL", _first_line(["openssl", "version"])),
        ("load average (1, 5, 15 min) before / after", f"{load_before} / {load_after}"),
        ("duration", f"{elapsed / 60:.1f} min"),
    ]


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (result.stdout.strip() or result.stderr.strip()).splitlines()
    return text[0].strip() if text else "unknown"


def _grep(argv: list[str], needle: str) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    for line in (result.stdout + result.stderr).splitlines():
        if needle in line:
            return line.strip()
    return "unknown"


def _module_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (FILE_LIMIT, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
            return wanted  # inherited by every program this run starts
        except (ValueError, OSError):
            continue
    return soft


def _environ() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AMBASSADOR_")}
    environ["PYTHONUNBUFFERED"] = "1"
    return environ


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Ambassador against the tunnels people use today, in one run.",
    )
    parser.add_argument(
        "--chains",
        default=",".join(CHAINS),
        help=f"comma-separated, from: {', '.join(CHAINS)} (default: all)",
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="rounds of every chain (default 3, or 1 with --quick)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller counts and shorter transfers: a smoke run of a few minutes",
    )
    parser.add_argument(
        "--conns",
        type=int,
        default=0,
        help="connections held open (default 10,000; 2,000 with --quick)",
    )
    parser.add_argument(
        "--hold-paced",
        action="store_true",
        help="each held connection does a PING as it opens, so at most 100 are being set up "
        "at once (default: open them all, then PING)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs",
        help="folder for benchmarks.md and benchmarks.png (default: docs/)",
    )
    parser.add_argument(
        "--amb-bin",
        type=Path,
        default=Path(sys.executable).parent,
        help="folder holding ambassador-server/-client (default: this Python's)",
    )
    parser.add_argument(
        "--port-base",
        type=int,
        default=21000,
        help="fixed ports are taken from here to +4100 (default 21000)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the round orders")
    parser.add_argument("--keep-logs", action="store_true", help="keep the programs' logs")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.chains.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHAINS]
    if unknown:
        parser.error(f"unknown chain(s) {', '.join(unknown)}; choose from {', '.join(CHAINS)}")
    args.chains = names
    return args
