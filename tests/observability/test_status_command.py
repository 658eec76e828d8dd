"""``ambassador-client status`` and ``ambassador-server status``: the table an operator reads
on the host, from the running process's endpoint, and one clear line when there is none."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.support import ambassador, run_program
from tests.observability.conftest import CLIENT_NAME, SERVER_NAME, MeteredPair
from tests.observability.support import table_rows

pytestmark = pytest.mark.integration


def status(role: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = run_program([*ambassador(role), "status", *args], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def assert_moved_bytes(row: dict[str, str]) -> None:
    assert int(row["bytes_in"]) > 0, row
    assert int(row["bytes_out"]) > 0, row


def test_client_status_shows_the_remote_up_and_the_services(metered_pair: MeteredPair) -> None:
    cm = metered_pair.client_metrics
    text = status("client", f"--endpoint=127.0.0.1:{cm}")
    assert text.splitlines()[0].startswith(f"ambassador-client {CLIENT_NAME}, up ")
    assert text.splitlines()[0].endswith("ready: True")

    [remote] = table_rows(text, "REMOTES")
    assert remote["peer"] == f"127.0.0.1:{metered_pair.server.port}"
    assert remote["state"] == "up"
    assert_moved_bytes(remote)
    assert remote["last_error"] == "-"

    services = {row["service"]: row for row in table_rows(text, "SERVICES")}
    assert set(services) == {
        f"redis on 127.0.0.1:{metered_pair.redis_port}",
        f"dead on 127.0.0.1:{metered_pair.dead_port}",
    }
    redis = services[f"redis on 127.0.0.1:{metered_pair.redis_port}"]
    assert int(redis["streams_total"]) >= metered_pair.redis_connections
    assert_moved_bytes(redis)
    assert redis["refused"] == "0"
    assert services[f"dead on 127.0.0.1:{metered_pair.dead_port}"]["refused"] == "1"

    # Without --endpoint, the command reads the address the process was told to serve on.
    again = status("client", env={"AMBASSADOR_METRICS_LISTEN": f"127.0.0.1:{cm}"})
    assert table_rows(again, "REMOTES")[0]["state"] == "up"


def test_server_status_shows_the_session_up_and_the_services(metered_pair: MeteredPair) -> None:
    text = status("server", f"--endpoint=127.0.0.1:{metered_pair.server_metrics}")
    assert text.splitlines()[0].startswith(f"ambassador-server {SERVER_NAME}, up ")
    assert text.splitlines()[0].endswith("ready: True")

    [session] = table_rows(text, "SESSIONS")
    # The peer is the client's address as the server sees it, with its identity.
    assert session["peer"].startswith("127.0.0.1:"), session
    assert session["state"] == "up"
    assert_moved_bytes(session)

    services = {row["service"]: row for row in table_rows(text, "SERVICES")}
    redis = services[f"redis:{metered_pair.redis.port} -> 127.0.0.1:{metered_pair.redis.port}"]
    assert int(redis["streams_total"]) >= metered_pair.redis_connections
    assert_moved_bytes(redis)
    dead = services[f"dead:{metered_pair.dead_backend} -> 127.0.0.1:{metered_pair.dead_backend}"]
    assert dead["refused"] == "1"


@pytest.mark.parametrize("role", ["client", "server"])
def test_status_with_nothing_at_the_endpoint_is_one_line(
    role: str, free_port: Callable[..., int]
) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    result = run_program([*ambassador(role), "status", f"--endpoint={endpoint}"])
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ambassador-{role}: error: cannot read status from ")
    assert endpoint in lines[0]
    assert "Traceback" not in result.stderr
