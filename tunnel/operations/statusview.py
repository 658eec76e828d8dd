"""Rendering a role's status (a plain dict, as served on /status) for people.

Pure functions: the facts become the text tables of ``ambassador-* status`` and the view
``status --watch`` redraws (the endpoint's page is :mod:`tunnel.operations.statuspage`). The
dict has ``role``, ``name``, ``uptime``, a list of ``remotes`` (client) or ``sessions``
(server) and a list of ``services``; with helper processes also ``workers``, and each session
or remote its ``worker``. A server's pooled service has ``targets``, shown one line each.

Every cell is passed through :func:`~tunnel.protocol.peertext.shown`: the status holds names and
errors that came from peers and backends, and a terminal must not take them for its own.
"""

from __future__ import annotations

from typing import Any

from tunnel.protocol.peertext import shown
from tunnel.settings.wording import rate, size

_SESSION_COLUMNS = ("peer", "state", "rtt_ms", "streams", "bytes_in", "bytes_out", "last_error")
_SERVICE_COLUMNS = ("service", "open_streams", "streams_total", "bytes_in", "bytes_out", "refused")
_TARGET_COLUMNS = ("service", "target", "state", "open", "opened", "last_error")


def _rows(items: list[dict[str, Any]], columns: tuple[str, ...]) -> list[list[str]]:
    return [[_cell(item.get(column)) for column in columns] for item in items]


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return shown(str(value))


def _targets(services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per target of every pooled service, named by its service's name alone (the
    service row lists the targets after "->")."""
    rows = []
    for service in services:
        name = str(service.get("service", "")).split(" -> ")[0]
        for target in service.get("targets") or []:
            rows.append(dict(target, service=name, state=_target_state(target)))
    return rows


def _target_state(target: dict[str, Any]) -> str:
    """Its health; with helper processes that disagree (each checks on its own), how many
    of them see it so."""
    state = str(target.get("state", ""))
    states = target.get("states")
    if isinstance(states, dict) and len(states) > 1:
        return f"{state} ({states.get(state, 0)} of {sum(states.values())} workers)"
    return state


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _sessions(status: dict[str, Any]) -> list[dict[str, Any]]:
    return list(status.get("remotes") or status.get("sessions") or [])


def _session_columns(status: dict[str, Any]) -> tuple[str, ...]:
    """With helper processes, each session or remote also says which worker holds it."""
    return ("worker", *_SESSION_COLUMNS) if "workers" in status else _SESSION_COLUMNS


def render_text(status: dict[str, Any], endpoint: str | None = None) -> str:
    title = f"{status.get('role', '?')} {status.get('name', '')}".strip()
    if isinstance(status.get("pid"), int):
        title += f" (pid {status['pid']})"
    if endpoint is not None:
        title += f" at {endpoint}"
    head = f"{title}, up {_cell(status.get('uptime'))}s, ready: {status.get('ready')}"
    which = "remotes" if status.get("role") == "ambassador-client" else "sessions"
    parts = [head, "", which.upper()]
    columns = _session_columns(status)
    parts.append(_table(columns, _rows(_sessions(status), columns)))
    parts += ["", "SERVICES"]
    services = list(status.get("services") or [])
    parts.append(_table(_SERVICE_COLUMNS, _rows(services, _SERVICE_COLUMNS)))
    targets = _targets(services)
    if targets:
        parts += ["", "TARGETS"]
        parts.append(_table(_TARGET_COLUMNS, _rows(targets, _TARGET_COLUMNS)))
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ the watching view

_WATCH_SESSION = ("peer", "state", "rtt_ms", "streams", "in/s", "out/s", "bytes_in", "bytes_out",
                  "last_error")  # fmt: skip
_WATCH_SERVICE = ("service", "open_streams", "streams_total", "in/s", "out/s", "bytes_in",
                  "bytes_out", "refused")  # fmt: skip


def _key(row: dict[str, Any]) -> str:
    return str(row.get("peer", row.get("service", "")))


def with_rates(
    status: dict[str, Any], previous: dict[str, Any] | None, seconds: float
) -> dict[str, Any]:
    """``status`` with each session's and service's ``rate_in``/``rate_out`` (bytes a second)
    over the ``seconds`` since ``previous`` (None: no rate yet). A row the previous status
    lacks, or whose counts went down (the process restarted), has no rate."""
    status = dict(status)
    for which in ("remotes", "sessions", "services"):
        before = {_key(row): row for row in (previous or {}).get(which) or []}
        rows = []
        for row in status.get(which) or []:
            row, old = dict(row), before.get(_key(row))
            for field in ("in", "out"):
                count = f"bytes_{field}"
                moved = None if old is None else row.get(count, 0) - old.get(count, 0)
                good = moved is not None and moved >= 0 and seconds > 0
                row[f"rate_{field}"] = moved / seconds if good and moved is not None else None
            rows.append(row)
        if which in status:
            status[which] = rows
    return status


def _human(column: str, row: dict[str, Any]) -> str:
    if column in ("in/s", "out/s"):
        value = row.get("rate_" + column[:-2])
        return "-" if value is None else rate(value)
    if column in ("bytes_in", "bytes_out"):
        return size(row.get(column) or 0)
    return _cell(row.get(column))


def render_watch(status: dict[str, Any], endpoint: str, interval: float, problem: str = "") -> str:
    """The view ``status --watch`` redraws: the tables with rates and sizes in human units,
    and, when the last read failed, why (the figures are then the last ones read)."""
    head = render_text(status, endpoint).splitlines()[0]
    lines = [head, f"every {interval:g}s; Ctrl-C to stop" + (f"; {problem}" if problem else "")]
    which = "remotes" if status.get("role") == "ambassador-client" else "sessions"
    session_columns = ("worker", *_WATCH_SESSION) if "workers" in status else _WATCH_SESSION
    for title, columns, items in (
        (which.upper(), session_columns, _sessions(status)),
        ("SERVICES", _WATCH_SERVICE, list(status.get("services") or [])),
    ):
        rows = [[_human(column, item) for column in columns] for item in items]
        lines += ["", title, _table(columns, rows)]
    targets = _targets(list(status.get("services") or []))
    if targets:
        lines += ["", "TARGETS", _table(_TARGET_COLUMNS, _rows(targets, _TARGET_COLUMNS))]
    return "\n".join(lines) + "\n"
