"""The sans-IO core alone: two sessions joined in memory, request/response on 50 streams.

``python -m tests.bench.core`` prints the CPU time of one request and its response through both
sessions (client frames it, server decodes it and frames the answer, client decodes that), the
way the transport drives them: reads into the session's buffer, gathered writes. No socket and
no event loop, so the figure moves little with the machine's load; it is what the core costs
per small message, to compare before and after a change.
"""

from __future__ import annotations

import argparse
import time

from tunnel.protocol.events import DataReceived, Event
from tunnel.protocol.session import Role, Session

REQUEST = b"*1\r\n$4\r\nPING\r\n"
ANSWER = b"+PONG\r\n"


def deliver(
    session: Session, buffers: list[bytes | bytearray | memoryview], now: float
) -> list[Event]:
    """Hand ``buffers`` to ``session`` as a BufferedProtocol read would."""
    data = memoryview(b"".join(buffers))
    events: list[Event] = []
    while data:
        room = session.get_buffer()
        count = min(len(room), len(data))
        room[:count] = data[:count]
        data = data[count:]
        events += session.buffer_updated(count, now)
    return events


def round_trips(client: Session, server: Session, streams: list[int], rounds: int) -> None:
    for _ in range(rounds):
        for stream_id in streams:
            client.send_data(stream_id, REQUEST)
        for event in deliver(server, client.buffers_to_send(), 0.0):
            if type(event) is DataReceived:
                server.consumed(event.stream_id, len(event.data), 0.0)
                server.send_data(event.stream_id, ANSWER)
        for event in deliver(client, server.buffers_to_send(), 0.0):
            if type(event) is DataReceived:
                client.consumed(event.stream_id, len(event.data), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7, help="best of this many runs")
    args = parser.parse_args()
    client, server = Session(Role.CLIENT), Session(Role.SERVER)
    streams = [client.open_stream() for _ in range(args.streams)]
    deliver(server, client.buffers_to_send(), 0.0)
    deliver(client, server.buffers_to_send(), 0.0)
    best = float("inf")
    for _ in range(args.repeat):
        start = time.process_time()
        round_trips(client, server, streams, args.rounds)
        best = min(best, time.process_time() - start)
    per_request = best / (args.rounds * args.streams)
    print(f"{per_request * 1e6:.2f} us of CPU per request and response through both sessions")


if __name__ == "__main__":
    main()
