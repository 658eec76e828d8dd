"""Rendering a role's status (a plain dict, as served on /status) for people.

Pure functions: the same facts become a text table for ``ambassador-* status`` and a small HTML
page for the status endpoint. The dict has ``role``, ``name``, ``uptime``, a list of ``remotes``
(client) or ``sessions`` (server) and a list of ``services``; with helper processes also
``workers``, and each session or remote its ``worker``.
"""

from __future__ import annotations

import html
from typing import Any

_SESSION_COLUMNS = ("peer", "state", "rtt_ms", "streams", "bytes_in", "bytes_out", "last_error")
_SERVICE_COLUMNS = ("service", "open_streams", "streams_total", "bytes_in", "bytes_out", "refused")


def _rows(items: list[dict[str, Any]], columns: tuple[str, ...]) -> list[list[str]]:
    return [[_cell(item.get(column)) for column in columns] for item in items]


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


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
    return "\n".join(parts) + "\n"


def _html_table(columns: tuple[str, ...], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(status: dict[str, Any]) -> str:
    title = html.escape(f"{status.get('role', '?')} {status.get('name', '')}".strip())
    ready = "ready" if status.get("ready") else "not ready"
    which = "Remotes" if status.get("role") == "ambassador-client" else "Sessions"
    columns = _session_columns(status)
    sessions = _html_table(columns, _rows(_sessions(status), columns), "sessions")
    services = _html_table(
        _SERVICE_COLUMNS, _rows(list(status.get("services") or []), _SERVICE_COLUMNS), "services"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='5'><title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
        ".ready{color:#070}.not{color:#a00}</style></head><body>"
        f"<h1>{title}</h1>"
        f"<p id='state' class='{'ready' if status.get('ready') else 'not'}'>{ready}, "
        f"up {html.escape(_cell(status.get('uptime')))} s</p>"
        f"<h2>{which}</h2>{sessions}<h2>Services</h2>{services}"
        "<p><a href='/metrics'>metrics</a> · <a href='/status'>status JSON</a></p>"
        "</body></html>"
    )
