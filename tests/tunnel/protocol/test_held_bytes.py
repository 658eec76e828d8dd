"""Bytes received and not yet consumed are bounded by session_memory, not by refusing streams.

yamux lets the peer fill each stream's first 256 KiB window without asking, so a peer that
opens thousands of streams whose local consumers read nothing could make a session hold
max_streams x 256 KiB. The session counts what it holds and asks its driver to stop reading
(``wants_read``) past session_memory, and to read again once the consumers have taken half of it.
"""

from __future__ import annotations

from tunnel.protocol.events import ConnectionTerminated, StreamOpened
from tunnel.protocol.frames import Flags, FrameType, encode_header
from tunnel.protocol.limits import INITIAL_WINDOW, MIB, Limits
from tunnel.protocol.session import Role, Session

BOUND = 8 * MIB
FRAME = INITIAL_WINDOW  # a whole first window in one Data frame


def first_window(stream_id: int) -> bytes:
    """A stream opened by the peer with its whole first window of data at once."""
    return encode_header(FrameType.DATA, Flags.SYN, stream_id, FRAME) + bytes(FRAME)


def test_a_peer_filling_2000_first_windows_is_stopped_at_the_bound_and_resumed() -> None:
    server = Session(Role.SERVER, Limits(session_memory=BOUND))
    now = 0.0
    ids = [2 * n + 1 for n in range(2000)]
    fed = 0
    for stream_id in ids:
        if not server.wants_read:
            break
        server.receive_data(first_window(stream_id), now)
        fed += 1
        assert server.held <= BOUND + FRAME
    # Nothing is consumed: reading stops as soon as the held bytes pass the bound.
    assert not server.wants_read
    assert fed == BOUND // FRAME + 1
    assert server.held == fed * FRAME
    assert server.read_pauses == 1
    # The consumers take what they hold, oldest first: reading resumes at half the bound.
    consumed = 0
    while not server.wants_read:
        server.consumed(ids[consumed], FRAME, now)
        consumed += 1
        assert server.held > BOUND // 2 or server.wants_read
    assert server.held <= BOUND // 2
    # The rest of the 2000 streams come in, and never is more held than the bound and a frame.
    held_most = 0
    while fed < len(ids):
        if server.wants_read:
            server.receive_data(first_window(ids[fed]), now)
            fed += 1
        else:
            server.consumed(ids[consumed], FRAME, now)
            consumed += 1
        held_most = max(held_most, server.held)
    assert held_most <= BOUND + FRAME
    stats = server.stats()
    assert stats.streams_opened_remote == 2000 and stats.streams_refused == 0
    assert not server.terminated
    assert server.read_pauses > 1


def test_held_bytes_of_a_stream_the_peer_resets_are_released() -> None:
    server = Session(Role.SERVER, Limits(session_memory=BOUND))
    for n in range(BOUND // FRAME + 1):
        server.receive_data(first_window(2 * n + 1), 0.0)
    assert not server.wants_read
    # Streams reset with their bytes unread: their local sockets are closed, the bytes dropped.
    for n in range(BOUND // FRAME // 2 + 1):
        server.receive_data(encode_header(FrameType.WINDOW_UPDATE, Flags.RST, 2 * n + 1, 0), 0.0)
    assert server.wants_read
    assert server.held == (BOUND // FRAME // 2) * FRAME


def test_a_stream_the_peer_has_ended_still_releases_what_it_held() -> None:
    server = Session(Role.SERVER, Limits(session_memory=BOUND))
    server.receive_data(first_window(1), 0.0)
    server.receive_data(encode_header(FrameType.WINDOW_UPDATE, Flags.FIN, 1, 0), 0.0)
    assert server.held == FRAME
    server.consumed(1, FRAME, 0.0)
    assert server.held == 0


def test_while_reading_is_paused_the_peer_is_pinged_and_not_declared_dead() -> None:
    server = Session(Role.SERVER, Limits(session_memory=BOUND))
    for n in range(BOUND // FRAME + 1):
        server.receive_data(first_window(2 * n + 1), 0.0)
    server.data_to_send(limit=1 << 30)
    assert not server.wants_read
    timer = server.get_timer()
    assert timer is not None and timer <= 1.0  # soon: the peer must hear from this end
    pings = 0
    now = 0.0
    while now < 120.0:  # far past the keepalive timeout: the answers wait unread, not lost
        now += 0.5
        server.handle_timer(now)
        pings += server.data_to_send().count(encode_header(FrameType.PING, Flags.SYN, 0, 0)[:4])
    assert not server.terminated
    assert not any(isinstance(e, ConnectionTerminated) for e in server.take_events())
    assert pings >= 100


def test_5000_idle_streams_are_all_accepted() -> None:
    server = Session(Role.SERVER)  # the defaults: 256 MiB, 8192 streams
    wire = b"".join(
        encode_header(FrameType.WINDOW_UPDATE, Flags.SYN, 2 * n + 1, 0) for n in range(5000)
    )
    events = server.receive_data(wire, 0.0)
    assert sum(isinstance(e, StreamOpened) for e in events) == 5000
    assert server.stats().streams_refused == 0 and server.open_streams == 5000
    assert server.wants_read and server.held == 0
