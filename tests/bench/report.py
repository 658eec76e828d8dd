"""From the samples of every round to docs/benchmarks.md, docs/benchmarks.png and the ratios.

Each figure is the median over the rounds in which it was measured. A cell shows ``failed`` when
no round produced the figure (the reason is listed under the tables), ``n/a`` when the
measurement does not apply to the chain, and ``(k/N)`` when only k of N rounds produced it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .chains import CHAINS, HOLD_CHAINS
from .measure import Sample


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    higher_better: bool
    digits: int = 0
    main: bool = False  # drawn in the PNG and compared in the ratios

    def show(self, value: float) -> str:
        return f"{value:,.{self.digits}f}"


METRICS = {
    m.key: m
    for m in (
        Metric("pg1_tps", "pgbench -S tps, 1 client", True, main=True),
        Metric("pg8_tps", "pgbench -S tps, 8 clients", True, main=True),
        Metric("pgC_tps", "pgbench -S -C tps, 8 clients, new connection each", True, main=True),
        Metric("idle_p50_ms", "idle PING p50 ms", False, 3, main=True),
        Metric("idle_p99_ms", "idle PING p99 ms", False, 3, main=True),
        Metric("ping_rps", "PING rps, 50 clients", True, main=True),
        Metric("ping_p50_ms", "PING p50 ms", False, 3),
        Metric("ping_p99_ms", "PING p99 ms", False, 3, main=True),
        Metric("set_rps", "SET rps, 20 clients, new connection each", True, main=True),
        Metric("set_cpu_us", "CPU us per new connection", False, 0),
        Metric("iperf1_gbps", "iperf3 1 stream Gbit/s", True, 2, main=True),
        Metric("iperf8_gbps", "iperf3 8 streams Gbit/s", True, 2, main=True),
        Metric("cpu_s_per_gib", "CPU s per GiB", False, 2, main=True),
        Metric("cpu_kernel_s_per_gib", "of which in the kernel", False, 2),
        Metric("bulk_p50_ms", "PING p50 ms during bulk", False, 3),
        Metric("bulk_p99_ms", "PING p99 ms during bulk", False, 3, main=True),
        Metric("bulk_gbps", "bulk Gbit/s meanwhile", True, 2),
        Metric("paced_p50_ms", "PING p50 ms beside 1 Gbit/s", False, 3),
        Metric("paced_p99_ms", "PING p99 ms beside 1 Gbit/s", False, 3),
        Metric("paced_gbps", "paced Gbit/s meanwhile", True, 2),
        Metric("hold_opened", "connections open", True),
        Metric("hold_pinged", "of them answered", True),
        Metric("hold_open_s", "s to open them", False, 1),
        Metric("hold_each_p50_ms", "their PING p50 ms", False, 2),
        Metric("hold_each_p99_ms", "their PING p99 ms", False, 2),
        Metric("hold_p50_ms", "one more conn PING p50 ms", False, 3),
        Metric("hold_p99_ms", "one more conn PING p99 ms", False, 3, main=True),
        Metric("rss_total_mib", "peak RSS MiB, all chain processes", False, 1),
        Metric("wan_ttfb_ms", "first response ms (median)", False, 1, main=True),
        Metric("wan_ttfb_p90_ms", "first response ms (p90)", False, 1),
        Metric("wan_mbps", "1 stream MB/s, consumer to backend", True, 1, main=True),
        Metric("wan_down_mbps", "1 stream MB/s, backend to consumer", True, 1, main=True),
    )
}

TABLES = (
    (
        "Request rate, throughput and CPU",
        "pgbench select-only against PostgreSQL (1 client, 8 clients, and 8 clients opening a "
        "new connection for each transaction), the latency of one request at a time (a PING "
        "series on one connection, nothing else running: the same series as the fairness "
        "table's idle columns), "
        "redis-benchmark (PING inline, 50 clients; SET with a new connection per request, and "
        "the CPU time the chain's processes spent per connection meanwhile), iperf3 for 1 and 8 "
        "parallel streams (Gbit/s received), and CPU seconds the chain's processes spent per GiB "
        "of one iperf3 transfer of known size (and of them, the seconds spent in the kernel).",
        [
            "pg1_tps",
            "pg8_tps",
            "pgC_tps",
            "idle_p50_ms",
            "idle_p99_ms",
            "ping_rps",
            "ping_p50_ms",
            "ping_p99_ms",
            "set_rps",
            "set_cpu_us",
            "iperf1_gbps",
            "iperf8_gbps",
            "cpu_s_per_gib",
            "cpu_kernel_s_per_gib",
        ],
    ),
    (
        "Fairness: PING latency while a bulk transfer shares the chain",
        "A PING series on one connection, first with nothing else running, then while one iperf3 "
        "stream runs through the same chain as fast as it can, then while one runs paced at "
        "1 Gbit/s (iperf3 -b 1G).",
        [
            "idle_p50_ms",
            "idle_p99_ms",
            "bulk_p50_ms",
            "bulk_p99_ms",
            "bulk_gbps",
            "paced_p50_ms",
            "paced_p99_ms",
            "paced_gbps",
        ],
    ),
    (
        "Many connections held open",
        "{conns} consumer connections opened through the chain and held; each then does one PING "
        "(50 at a time); then one more connection runs a PING series while all are open (compare "
        "with the idle series above); peak RSS (VmHWM) of each chain process tree while they were "
        "open.",
        [
            "hold_opened",
            "hold_pinged",
            "hold_open_s",
            "hold_each_p50_ms",
            "hold_each_p99_ms",
            "hold_p50_ms",
            "hold_p99_ms",
            "idle_p99_ms",
            "rss_total_mib",
        ],
    ),
    (
        "Over a simulated 50 ms round trip",
        "A delay proxy (25 ms each way, handshake charged) between the two halves of each chain "
        "(between consumer and backend for direct): time from connect() to +PONG on a fresh "
        "connection, and one iperf3 stream each way in MB/s (consumer to backend, then with -R).",
        ["wan_ttfb_ms", "wan_ttfb_p90_ms", "wan_mbps", "wan_down_mbps"],
    ),
)

AMBASSADORS = (
    "ambassador", "ambassador-tls", "ambassador-ws", "ambassador-reverse", "ambassador-w2",
    "ambassador-tls-w2",
)  # fmt: skip
# One colour per chain, the same in every run whatever --chains selects.
COLOURS = {
    "direct": "#c7c7c7",
    "socat": "#1f77b4",
    "stunnel": "#ff7f0e",
    "ssh": "#9467bd",
    "spiped": "#8c564b",
    "haproxy": "#e377c2",
    "asyncssh": "#17becf",
    "ambassador": "#2ca02c",
    "ambassador-tls": "#d62728",
    "ambassador-ws": "#bcbd22",
    "ambassador-reverse": "#7f7f7f",
    "ambassador-w2": "#98df8a",
    "ambassador-tls-w2": "#ff9896",
}


@dataclass
class Summary:
    """Medians per chain and metric, with what is missing and why."""

    rounds: int
    chains: list[str]
    unavailable: dict[str, str]
    medians: dict[str, dict[str, float]]
    counts: dict[str, dict[str, int]]
    failures: dict[str, dict[str, str]]
    notes: dict[str, list[str]]
    # Chains that lost held connections in some round: their held-connection figures were
    # taken with fewer connections open than asked, so they are marked and not compared.
    short_hold: set[str]

    @classmethod
    def of(
        cls,
        chains: Sequence[str],
        samples: dict[str, list[Sample]],
        unavailable: dict[str, str],
        rounds: int,
    ) -> Summary:
        medians: dict[str, dict[str, float]] = {}
        counts: dict[str, dict[str, int]] = {}
        failures: dict[str, dict[str, str]] = {}
        notes: dict[str, list[str]] = {}
        short_hold: set[str] = set()
        for chain in chains:
            values: dict[str, list[float]] = {}
            rounds_of: dict[str, list[int]] = {}  # note -> the rounds it came up in
            for number, sample in enumerate(samples.get(chain, []), start=1):
                for key, value in sample.values.items():
                    values.setdefault(key, []).append(value)
                for key, why in sample.failures.items():
                    failures.setdefault(chain, {}).setdefault(key, why)
                for note in sample.notes:
                    rounds_of.setdefault(note, []).append(number)
                wanted = sample.values.get("hold_wanted")
                if wanted and sample.values.get("hold_pinged", 0) < 0.99 * wanted:
                    short_hold.add(chain)
            notes[chain] = [
                f"round{'s' if len(r) > 1 else ''} {', '.join(map(str, r))}: {note}"
                for note, r in rounds_of.items()
            ]
            medians[chain] = {k: statistics.median(v) for k, v in values.items()}
            counts[chain] = {k: len(v) for k, v in values.items()}
        return cls(
            rounds, list(chains), dict(unavailable), medians, counts, failures, notes, short_hold
        )

    def comparable(self, chain: str, key: str) -> bool:
        held = key.startswith(("hold_", "rss")) and key not in ("hold_opened", "hold_pinged")
        return not (held and chain in self.short_hold)

    def cell(self, chain: str, key: str) -> str:
        if chain in self.unavailable:
            return "not available"
        metric = METRICS.get(key)
        value = self.medians[chain].get(key)
        if value is None:
            if key in self.failures.get(chain, {}):
                return "failed"
            return "n/a"
        text = metric.show(value) if metric else f"{value:,.1f}"
        count = self.counts[chain].get(key, 0)
        text = text if count >= self.rounds else f"{text} ({count}/{self.rounds})"
        return text if self.comparable(chain, key) else f"{text} †"

    def best_anchor(self, key: str) -> float | None:
        metric = METRICS[key]
        values = [
            self.medians[c][key]
            for c in self.chains
            if CHAINS[c].anchor and key in self.medians.get(c, {}) and self.comparable(c, key)
        ]
        values = [v for v in values if v > 0]
        if not values:
            return None
        return max(values) if metric.higher_better else min(values)

    def ratio(self, chain: str, anchor: str, key: str) -> float | None:
        """How many times better ``chain`` is than ``anchor`` on ``key`` (above 1: ahead)."""
        ours, theirs = self.medians.get(chain, {}).get(key), self.medians.get(anchor, {}).get(key)
        if not ours or not theirs:
            return None
        if not (self.comparable(chain, key) and self.comparable(anchor, key)):
            return None
        return ours / theirs if METRICS[key].higher_better else theirs / ours


def rss_columns(summary: Summary) -> list[str]:
    keys = sorted({k for c in summary.chains for k in summary.medians[c] if k.startswith("rss:")})
    return keys


def markdown(
    summary: Summary, machine: list[tuple[str, str]], settings_text: str, conns: int, png_name: str
) -> str:
    out = [
        "# Benchmarks",
        "",
        "Generated by `python -m tests.bench` (see `tests/bench/README.md`). All chains ran on "
        "one machine, interleaved, in one run: compare figures only within this page.",
        "",
        "## Machine and run",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [f"| {name} | {value} |" for name, value in machine]
    out += ["", settings_text, "", f"![ambassador and the anchors, normalised]({png_name})", ""]
    for title, text, keys in TABLES:
        if title.startswith("Many"):
            chains = [c for c in summary.chains if c in HOLD_CHAINS]
            keys = keys + rss_columns(summary)
        else:
            chains = summary.chains
        if not chains:
            continue
        out += [f"## {title}", "", text.format(conns=f"{conns:,}"), ""]
        out += [
            "| chain | " + " | ".join(_title(k) for k in keys) + " |",
            "|---|" + "---:|" * len(keys),
        ]
        for chain in chains:
            out.append(
                f"| {CHAINS[chain].label} | "
                + " | ".join(summary.cell(chain, k) for k in keys)
                + " |"
            )
        if title.startswith("Many") and summary.short_hold & set(chains):
            out += [
                "",
                "† In at least one round fewer than 99% of the held connections answered: these "
                "figures were taken with fewer connections open than asked (see the failures "
                "and notes below), so they are left out of the ratios and the plot.",
            ]
        out.append("")
    out += ratio_markdown(summary)
    out += problems_markdown(summary)
    return "\n".join(out)


def _title(key: str) -> str:
    if key.startswith("rss:"):
        return f"peak RSS MiB: {key[4:]}"
    return METRICS[key].title


def ratio_lines(summary: Summary) -> list[tuple[str, str, str, float | None]]:
    rows = []
    for ours in AMBASSADORS:
        if ours not in summary.chains or ours in summary.unavailable:
            continue
        for anchor in summary.chains:
            if not CHAINS[anchor].anchor or anchor in summary.unavailable:
                continue
            for key, metric in METRICS.items():
                if metric.main:
                    rows.append((ours, anchor, key, summary.ratio(ours, anchor, key)))
    return rows


def ratio_markdown(summary: Summary) -> list[str]:
    keys = [k for k, m in METRICS.items() if m.main]
    anchors = [c for c in summary.chains if CHAINS[c].anchor and c not in summary.unavailable]
    ours = [c for c in AMBASSADORS if c in summary.chains and c not in summary.unavailable]
    if not anchors or not ours:
        return []
    out = [
        "## Ambassador against each anchor",
        "",
        "How many times better ambassador is (above 1: ahead; for rates divided, for "
        "latencies and CPU inverted). Each cell: "
        + " / ".join(CHAINS[c].label for c in ours)
        + ".",
        "",
        "| anchor | " + " | ".join(METRICS[k].title for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for anchor in anchors:
        cells = []
        for key in keys:
            parts = [summary.ratio(c, anchor, key) for c in ours]
            cells.append(" / ".join("-" if r is None else f"{r:.2f}" for r in parts))
        out.append(f"| {CHAINS[anchor].label} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def problems_markdown(summary: Summary) -> list[str]:
    out = []
    for chain in summary.chains:
        lines = []
        if chain in summary.unavailable:
            lines.append(f"not available: {summary.unavailable[chain]}")
        for key, why in summary.failures.get(chain, {}).items():
            counted = summary.counts[chain].get(key, 0)
            lines.append(
                f"{_title(key) if key in METRICS else key}: failed in "
                f"{summary.rounds - counted} of {summary.rounds} rounds: {why}"
            )
        lines += summary.notes.get(chain, [])
        if lines:
            out += [f"- **{CHAINS[chain].label}**"] + [f"  - {_md_line(line)}" for line in lines]
    return ["## Failures and notes", "", *out, ""] if out else []


def _md_line(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())[:600]


def plot(summary: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, m in METRICS.items() if m.main]
    keys = [k for k in keys if summary.best_anchor(k)]
    chains = [c for c in summary.chains if c not in summary.unavailable]
    if not keys or not chains:
        return
    fig, ax = plt.subplots(figsize=(20, 7), dpi=110)
    width = 0.85 / len(chains)
    for index, chain in enumerate(chains):
        heights = []
        for key in keys:
            best, value = summary.best_anchor(key), summary.medians[chain].get(key)
            if not value or not best or not summary.comparable(chain, key):
                heights.append(float("nan"))
            else:
                heights.append(value / best if METRICS[key].higher_better else best / value)
        xs = [i + (index - (len(chains) - 1) / 2) * width for i in range(len(keys))]
        ours = chain in AMBASSADORS
        ax.bar(
            xs,
            heights,
            width,
            label=CHAINS[chain].label,
            color=COLOURS.get(chain, "#7f7f7f"),
            hatch="//" if chain.startswith("ambassador-tls") else None,
            edgecolor="black" if ours else None,
            linewidth=1.2 if ours else 0,
        )
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([_short(k) for k in keys], fontsize=9)
    ax.set_ylabel("times the best anchor (log scale; above 1 is better)")
    ax.set_title(
        "Each chain against the best anchor of each column "
        "(latency and CPU inverted, so higher is always better)"
    )
    ax.legend(ncol=3, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _short(key: str) -> str:
    return {
        "pg1_tps": "pgbench -S\n1 client",
        "pg8_tps": "pgbench -S\n8 clients",
        "pgC_tps": "pgbench -S -C\n(new conn each)",
        "idle_p50_ms": "one request:\np50 latency",
        "idle_p99_ms": "one request:\np99 latency",
        "ping_rps": "PING rps\n(50 clients)",
        "ping_p99_ms": "PING p99\nlatency",
        "set_rps": "SET rps\n(new conn each)",
        "iperf1_gbps": "iperf3\n1 stream",
        "iperf8_gbps": "iperf3\n8 streams",
        "cpu_s_per_gib": "CPU per GiB",
        "bulk_p99_ms": "PING p99\nduring bulk",
        "hold_p99_ms": "PING p99 with\nmany conns open",
        "wan_ttfb_ms": "50 ms RTT:\nfirst response",
        "wan_mbps": "50 ms RTT:\nMB/s to backend",
        "wan_down_mbps": "50 ms RTT:\nMB/s from backend",
    }.get(key, key)
