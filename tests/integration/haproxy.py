"""haproxy in TCP mode for the end-to-end tests, logging each connection's source as it sees
it (``src=HOST:PORT``, read from a PROXY header when its ``bind`` line has ``accept-proxy``)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.support import Processes, Started, require_programs

HAPROXY = "/usr/sbin/haproxy"


def haproxy(processes: Processes, tmp_path: Path, frontend: str, backend: str) -> Started:
    if not Path(HAPROXY).exists():
        require_programs("haproxy")
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "global\n  log stderr format raw local0 info\n"
        "defaults\n  mode tcp\n  log global\n  option logasap\n"
        "  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n"
        f'frontend fe\n  {frontend}\n  log-format "src=%ci:%cp"\n  default_backend be\n'
        f"backend be\n  {backend}\n"
    )
    return processes.start("haproxy", [HAPROXY, "-db", "-f", str(config)])
