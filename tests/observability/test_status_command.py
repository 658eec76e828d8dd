"""``ambassador-client status`` and ``ambassador-server status``: the table an operator reads
on the host, from the running process's endpoint, and one clear line when there is none."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
    pid = metered_pair.client.pid
    head = f"ambassador-client {CLIENT_NAME} (pid {pid}) at 127.0.0.1:{cm}, up "
    assert text.splitlines()[0].startswith(head)
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
    sm = metered_pair.server_metrics
    text = status("server", f"--endpoint=127.0.0.1:{sm}")
    pid = metered_pair.server.process.pid
    head = f"ambassador-server {SERVER_NAME} (pid {pid}) at 127.0.0.1:{sm}, up "
    assert text.splitlines()[0].startswith(head)
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


def test_status_reads_the_endpoint_from_the_roles_config_file(
    metered_pair: MeteredPair, tmp_path: Path
) -> None:
    # Both roles on one host, each with its own endpoint (the shipped client.toml uses 9701).
    cm, sm = metered_pair.client_metrics, metered_pair.server_metrics
    config = tmp_path / "client.toml"
    config.write_text(f'remote = ["127.0.0.1:{metered_pair.server.port}"]\n'
                      f'metrics-listen = "127.0.0.1:{cm}"\n')  # fmt: skip
    head = f"ambassador-client {CLIENT_NAME} (pid {metered_pair.client.pid}) at 127.0.0.1:{cm}"
    for args, env in (
        (["status", f"--config={config}"], None),
        ([f"--config={config}", "status"], None),
        (["status"], {"AMBASSADOR_CONFIG": str(config)}),
    ):
        result = run_program([*ambassador("client"), *args], env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.splitlines()[0].startswith(head), (args, result.stdout)
        assert table_rows(result.stdout, "REMOTES")[0]["state"] == "up"
    # Flags and AMBASSADOR_METRICS_LISTEN win over the file, as they do for the role.
    env = {"AMBASSADOR_METRICS_LISTEN": f"127.0.0.1:{sm}"}
    result = run_program([*ambassador("server"), "status", f"--config={config}"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ambassador-server {SERVER_NAME} (pid ")


def test_status_of_the_other_roles_endpoint_says_so(metered_pair: MeteredPair) -> None:
    sm = metered_pair.server_metrics
    result = run_program([*ambassador("client"), "status", f"--endpoint=127.0.0.1:{sm}"])
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"ambassador-client: error: 127.0.0.1:{sm} is the status endpoint of ambassador-server "
        f"(pid {metered_pair.server.process.pid}), not of ambassador-client; give "
        "ambassador-client's metrics-listen address with --endpoint, or its config file with "
        "--config"
    ]


def test_status_with_a_config_file_that_serves_no_status_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text('remote = ["127.0.0.1:7700"]\n')
    result = run_program([*ambassador("client"), "status", f"--config={config}"])
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"ambassador-client: error: {config} sets no metrics-listen, so the process it "
        'configures serves no status; add metrics-listen = "127.0.0.1:9701" to it (and '
        "reload), or give --endpoint HOST:PORT"
    ]
