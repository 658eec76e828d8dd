"""/metrics of a running pair, read back with prometheus_client's parser: what a dashboard
built on the documented series would show after redis traffic, a refused stream and a server
restart."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.integration.support import AmbassadorServer, redis_cli
from tests.observability.conftest import MeteredPair
from tests.observability.support import Metrics, http_get, scrape, wait_for

pytestmark = pytest.mark.integration

SIDES = ("server", "client")


def metrics_of(pair: MeteredPair) -> dict[str, Metrics]:
    return {"server": scrape(pair.server_metrics), "client": scrape(pair.client_metrics)}


def test_sessions_streams_bytes_and_refusals_are_counted(metered_pair: MeteredPair) -> None:
    # The client counts a refusal when the answer arrives; poll until both sides show it.
    def refusal_counted() -> dict[str, Metrics] | None:
        pages = metrics_of(metered_pair)
        counted = all(
            pages[side].value("ambassador_stream_refusals_total", reason="backend_refused")
            for side in SIDES
        )
        return pages if counted else None

    pages = wait_for("a backend_refused refusal counted on both sides", refusal_counted, 5)
    for side in SIDES:
        page = pages[side]
        assert page.value("ambassador_sessions_open", role=side) == 1, side
        assert (
            page.value("ambassador_streams_total", role=side, service="redis")
            >= metered_pair.redis_connections
        ), side
        for direction in ("to_backend", "to_consumer"):
            assert (
                page.value(
                    "ambassador_bytes_total", role=side, service="redis", direction=direction
                )
                > 0
            ), (side, direction)
        refused = page.find("ambassador_stream_refusals_total", role=side, reason="backend_refused")
        assert {sample.labels["service"] for sample in refused if sample.value} == {"dead"}, side
        assert page.value("ambassador_streams_open", role=side) == 0, side
        # RTT, where exported, is a loopback round trip.
        for sample in page.find("ambassador_rtt_seconds"):
            assert 0 <= sample.value < 1.0, (side, sample)


def test_client_exports_the_rtt_its_session_measured(metered_pair: MeteredPair) -> None:
    # The session pings at start; its round-trip time shows in /status as rtt_ms, and the
    # same measurement is the ambassador_rtt_seconds series of the remote.
    def measured() -> float | None:
        remote = json.loads(http_get(metered_pair.client_metrics, "/status").body)["remotes"][0]
        return remote["rtt_ms"]

    wait_for("the client's /status to show an RTT", measured, timeout=3)
    remote = f"127.0.0.1:{metered_pair.server.port}"
    samples = scrape(metered_pair.client_metrics).find("ambassador_rtt_seconds", peer=remote)
    assert len(samples) == 1, "no ambassador_rtt_seconds series for the remote"
    assert 0 < samples[0].value < 1.0


def test_server_exports_each_clients_rtt_until_its_session_ends(
    metered_pair: MeteredPair,
) -> None:
    def server_series() -> list[float]:
        samples = scrape(metered_pair.server_metrics).find("ambassador_rtt_seconds")
        return [sample.value for sample in samples]

    values = wait_for("the server to export the client's RTT", lambda: server_series() or None, 3)
    assert len(values) == 1 and 0 < values[0] < 1.0, values
    metered_pair.client.stop()
    wait_for("the series to go with the session", lambda: not server_series(), timeout=5)


def test_reconnects_are_counted_after_the_server_restarts(
    metered_pair: MeteredPair,
    start_server: Callable[..., AmbassadorServer],
    wait_for_port: Callable[..., None],
) -> None:
    remote = f"127.0.0.1:{metered_pair.server.port}"
    before = scrape(metered_pair.client_metrics).value("ambassador_reconnects_total", remote=remote)

    metered_pair.server.process.kill()
    wait_for(
        "the client to see the session gone",
        lambda: scrape(metered_pair.client_metrics).value("ambassador_sessions_open") == 0,
        timeout=5,
    )
    server = start_server(
        *metered_pair.links,
        port=metered_pair.server.port,
        args=[f"--metrics-listen=127.0.0.1:{metered_pair.server_metrics}"],
    )
    wait_for_port("127.0.0.1", metered_pair.server_metrics, alive=server.process.alive)

    def session_back() -> Metrics | None:
        page = scrape(metered_pair.client_metrics)
        return page if page.value("ambassador_sessions_open") == 1 else None

    page = wait_for("the client's session back up", session_back, timeout=15)
    assert page.value("ambassador_reconnects_total", remote=remote) > before
    assert page.value("ambassador_sessions_total", role="client") >= 2
    assert scrape(metered_pair.server_metrics).value("ambassador_sessions_open") == 1
    # And the new session carries traffic.
    assert redis_cli(metered_pair.redis_port, "PING") == "PONG"


def test_status_and_metrics_agree_on_streams_bytes_and_refusals(
    metered_pair: MeteredPair,
) -> None:
    # /status reads the counts themselves and /metrics exports them: the two programs' pages
    # must say the same of every service, refusals by any reason included.
    def both_counted() -> bool:
        return all(
            scrape(port).value("ambassador_stream_refusals_total", service="dead") == 1
            for port in (metered_pair.server_metrics, metered_pair.client_metrics)
        )

    wait_for("the refusal counted on both sides", both_counted, 5)
    for side, port in (("server", metered_pair.server_metrics),
                       ("client", metered_pair.client_metrics)):  # fmt: skip
        rows = json.loads(http_get(port, "/status").body)["services"]
        page = scrape(port)
        assert {row["service"].split(":")[0].split(" ")[0] for row in rows} == {"redis", "dead"}
        for row in rows:
            labels = {"role": side, "service": row["service"].split(":")[0].split(" ")[0]}
            assert row["refused"] == page.value("ambassador_stream_refusals_total", **labels)
            assert row["streams_total"] == page.value("ambassador_streams_total", **labels)
            assert row["open_streams"] == page.value("ambassador_streams_open", **labels)
            assert row["bytes_in"] == page.value(
                "ambassador_bytes_total", direction="to_backend", **labels
            ), (side, row)
            assert row["bytes_out"] == page.value(
                "ambassador_bytes_total", direction="to_consumer", **labels
            ), (side, row)
        redis = next(row for row in rows if row["service"].startswith("redis"))
        assert redis["bytes_in"] > 0 and redis["bytes_out"] > 0, side
