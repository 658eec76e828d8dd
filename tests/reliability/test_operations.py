"""What operators do to a running pair: drain a server for maintenance, rewire services by
editing config files, run it over IPv6. Traffic that is not concerned carries on byte-exact."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.environment import missing
from tests.integration.support import AmbassadorServer, Processes, Started, ambassador
from tests.reliability.backends import EchoBackend
from tests.reliability.support import (
    KIB,
    MIB,
    Transfer,
    echo_transfer,
    ipv6_loopback,
    round_trip,
    run,
    wait_for_log,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_drain_under_load_finishes_open_streams_and_sends_new_ones_to_the_second_server(
    start_backend: Callable[[str], int],
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    make_echo: Callable[..., EchoBackend],
    free_port: Callable[..., int],
) -> None:
    first = start_server(f"echo=127.0.0.1:{start_backend('echo')}", args=("--drain-timeout", "30"))
    second_backend = make_echo()  # counts what reaches the second server
    second = start_server(f"echo=127.0.0.1:{second_backend.port}")
    local = free_port()
    client = start_client(
        f"--remote=127.0.0.1:{first.port}",
        f"--remote=127.0.0.1:{second.port}",
        f"--expose=127.0.0.1:{local}=echo",
        listens=[("127.0.0.1", local)],
    )
    client.wait_for_stderr(rf"tunnel up to 127\.0\.0\.1:{first.port}\b", 5)

    async def scenario() -> tuple[list[Transfer], Transfer, bool]:
        transfers = [Transfer(16 * MIB, seed) for seed in range(5)]
        tasks = [asyncio.ensure_future(echo_transfer(local, t, rate=4 * MIB)) for t in transfers]
        await wait_until(lambda: all(t.received >= MIB for t in transfers), 10, "under way")
        first.process.popen.send_signal(signal.SIGTERM)
        await wait_for_log(first.process, r"draining: 1 session, 5 open streams", 5)
        await wait_for_log(client, rf"tunnel up to 127\.0\.0\.1:{second.port}\b", 5)
        newcomer = await echo_transfer(local, Transfer(256 * KIB, seed=50), timeout=10)
        during_drain = first.process.alive()
        await asyncio.gather(*tasks)
        return transfers, newcomer, during_drain

    transfers, newcomer, during_drain = run(scenario())
    assert all(t.exact for t in transfers), [t for t in transfers if not t.exact]
    assert newcomer.exact, newcomer
    assert during_drain, "the first server had finished draining before the newcomer was served"
    assert second_backend.accepted == 1
    assert first.process.popen.wait(timeout=10) == 0
    assert "drain ended with" not in first.process.stderr()


def write_toml(path: Path, lines: list[str]) -> None:
    """Replace the file in one step, so a watcher never reads half of it."""
    scratch = path.with_suffix(".new")
    scratch.write_text("\n".join(lines) + "\n")
    scratch.replace(path)


def test_config_file_rewiring_under_load(
    tmp_path: Path,
    processes: Processes,
    start_backend: Callable[[str], int],
    make_echo: Callable[..., EchoBackend],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    """The server's file trades service alpha for beta, then the client's file trades its
    alpha listener for a beta one, while bulk streams to the unrelated echo service run."""
    bulk_backend, small = start_backend("echo"), make_echo().port
    tunnel, echo_port, alpha_port, beta_port = (free_port() for _ in range(4))
    server_file, client_file = tmp_path / "server.toml", tmp_path / "client.toml"
    server_head = [
        f'listen = "127.0.0.1:{tunnel}"',
        "[links]",
        f'echo = "127.0.0.1:{bulk_backend}"',
    ]
    write_toml(server_file, [*server_head, f'alpha = "127.0.0.1:{small}"'])
    client_head = [f'remote = "127.0.0.1:{tunnel}"']
    echo_expose = f'"127.0.0.1:{echo_port}=echo"'
    write_toml(
        client_file, [*client_head, f'expose = [{echo_expose}, "127.0.0.1:{alpha_port}=alpha"]']
    )
    server = processes.start(
        "ambassador-server", [*ambassador("server"), "--config", str(server_file)]
    )
    wait_for_port("127.0.0.1", tunnel, alive=server.alive)
    client = processes.start(
        "ambassador-client", [*ambassador("client"), "--config", str(client_file)]
    )
    client.wait_for_stderr(rf"exposing 'alpha' on 127\.0\.0\.1:{alpha_port}\b", 10)
    client.wait_for_stderr("tunnel up to ", 10)

    async def scenario() -> list[Transfer]:
        held_reader, held = await asyncio.open_connection("127.0.0.1", alpha_port)

        async def held_round_trip(text: bytes) -> None:
            held.write(text)
            assert await asyncio.wait_for(held_reader.readexactly(len(text)), 5) == text

        await held_round_trip(b"held, before")
        transfers = [Transfer(16 * MIB, seed) for seed in range(3)]
        tasks = [
            asyncio.ensure_future(echo_transfer(echo_port, t, rate=4 * MIB)) for t in transfers
        ]

        # The server's file: alpha goes, beta comes.
        write_toml(server_file, [*server_head, f'beta = "127.0.0.1:{small}"'])
        await wait_for_log(server, r"configuration reloaded: offering echo:\d+, beta:\d+", 5)
        await wait_for_log(client, r"does not offer 'alpha'", 5)
        refused = await echo_transfer(alpha_port, Transfer(KIB, seed=9), timeout=5)
        assert refused.outcome == "reset", refused
        await wait_for_log(
            client, r"connection to 'alpha' refused: the server does not offer it", 2
        )
        await held_round_trip(b"held, after the server dropped alpha")

        # The client's file: the alpha listener goes, a beta one comes.
        write_toml(
            client_file, [*client_head, f'expose = [{echo_expose}, "127.0.0.1:{beta_port}=beta"]']
        )
        await wait_for_log(client, rf"exposing 'beta' on 127\.0\.0\.1:{beta_port}\b", 5)
        await wait_for_log(client, r"no longer exposing 'alpha'", 5)
        assert await round_trip(beta_port, b"beta works") == b"beta works"
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", alpha_port)
        await held_round_trip(b"held, after the client dropped alpha")
        held.close()

        assert all(t.outcome == "running" for t in transfers), "the rewiring outlasted the bulk"
        await asyncio.gather(*tasks)
        return transfers

    transfers = run(scenario(), timeout=45)
    assert all(t.exact for t in transfers), [t for t in transfers if not t.exact]
    assert client.stderr().count("tunnel up to ") == 1


def test_pair_over_ipv6_loopback(
    processes: Processes,
    start_backend: Callable[[str], int],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    if not ipv6_loopback():
        missing("::1 is not available here")
    backend = start_backend("echo")
    tunnel, local = free_port("::1"), free_port("::1")
    server = processes.start(
        "ambassador-server",
        [
            *ambassador("server"),
            "--listen",
            f"[::1]:{tunnel}",
            "--link",
            f"echo=127.0.0.1:{backend}",
        ],
    )
    wait_for_port("::1", tunnel, alive=server.alive)
    start_client(
        f"--remote=[::1]:{tunnel}", f"--expose=[::1]:{local}=echo", listens=[("::1", local)]
    )
    server.wait_for_stderr(r"session up with \[::1\]:\d+", 5)
    transfer = run(echo_transfer(local, Transfer(8 * MIB, seed=6), host="::1"))
    assert transfer.exact, transfer
