"""The handshake when the server dialed: the client still speaks first, the server names its
token, each side checks that the other agrees on who dialed."""

from __future__ import annotations

import pytest

from tests.tunnel.protocol.test_handshake import (
    BINDING,
    CATALOG,
    CLIENT_NONCE,
    SERVER_NONCE,
    make_client,
    make_server,
    only,
    run,
)
from tunnel.errors import Reason
from tunnel.protocol.events import DataReceived, GoAwayReceived, StreamOpened
from tunnel.protocol.handshake import (
    ClientHandshake,
    Failed,
    Refused,
    ServerHandshake,
    TokenAttempt,
    TokenProofs,
    TurnedAway,
    Welcomed,
    refusal_before_hello,
)
from tunnel.protocol.messages import (
    Challenge,
    Hello,
    MessageReader,
    Refusal,
    Welcome,
    decode_message,
    encode_message,
)
from tunnel.protocol.session import Role, Session
from tunnel.security import auth

SECRET = b"edge1-secret-edge1-secret"


def dialing_server(
    *, token: tuple[str, bytes] | None = None, binding: bytes = b"", cert: str | None = None
) -> ServerHandshake:
    """A server that dialed, as server/dialer.py builds one: its one token, if any."""

    def verify(attempt: TokenAttempt) -> bytes | None:
        if token is None or attempt.name != token[0]:
            return None
        args = (token[1], attempt.name, attempt.client_nonce, attempt.server_nonce)
        expected = auth.client_proof(*args, version=attempt.version, binding=binding)
        if not auth.proofs_match(expected, attempt.proof):
            return None
        return auth.server_proof(*args, version=attempt.version, binding=binding)

    return ServerHandshake(
        server_name="edge1-host",
        nonce=SERVER_NONCE,
        identity=cert or "anonymous",
        certified=cert is not None,
        tokens=token is not None,
        bound=bool(binding),
        verify=verify,
        offer=lambda identity: CATALOG,
        dialed=True,
        own_token=None if token is None else token[0],
    )


def listening_client(
    tokens: dict[str, bytes] | None = None, binding: bytes = b""
) -> ClientHandshake:
    """A client that accepted the connection, holding a token file of several hosts."""

    def prove_named(name: str, version: int, server_nonce: bytes) -> TokenProofs | None:
        secret = (tokens or {}).get(name)
        if secret is None:
            return None
        args = (secret, name, CLIENT_NONCE, server_nonce)
        return TokenProofs(
            auth.client_proof(*args, version=version, binding=binding),
            auth.server_proof(*args, version=version, binding=binding),
        )

    return ClientHandshake(
        name="datacenter",
        software="ambassador/test",
        nonce=CLIENT_NONCE if tokens else b"",
        bound=bool(binding),
        listening=True,
        prove_named=prove_named if tokens else None,
    )


def test_the_hello_of_a_listening_client_says_so_and_survives_the_wire() -> None:
    hello = listening_client({"edge1": SECRET}).hello
    assert hello.listening and hello.token_name is None and hello.nonce == CLIENT_NONCE
    assert decode_message(encode_message(hello)[4:]) == hello
    welcome = Welcome(2, "edge1-host", CATALOG, dialed=True)
    assert decode_message(encode_message(welcome)[4:]) == welcome
    challenge = Challenge(SERVER_NONCE, 2, "edge1")
    assert decode_message(encode_message(challenge)[4:]) == challenge


def test_a_dialed_session_without_tokens_is_welcomed_and_says_dialed() -> None:
    result = run(listening_client(), dialing_server(cert="listener"))
    welcomed = only(result.client_events)
    assert isinstance(welcomed, Welcomed) and welcomed.welcome.dialed
    assert welcomed.welcome.catalog == CATALOG and welcomed.token_name is None


@pytest.mark.parametrize("binding", [b"", BINDING], ids=["plaintext", "tls"])
def test_the_dialing_server_names_its_token_and_both_prove_it(binding: bytes) -> None:
    client = listening_client({"edge2": b"x" * 20, "edge1": SECRET}, binding)
    result = run(client, dialing_server(token=("edge1", SECRET), binding=binding))
    assert [type(m).__name__ for m in result.wire] == ["Hello", "Challenge", "Auth", "Welcome"]
    challenge = result.wire[1]
    assert isinstance(challenge, Challenge) and challenge.token_name == "edge1"
    up = only(result.client_events)
    assert isinstance(up, Welcomed) and up.token_name == "edge1"  # the host's identity
    server_up = only(result.server_events)
    assert isinstance(server_up, Welcomed) and server_up.welcome.identity == "edge1"


def test_a_token_the_listening_client_does_not_hold_fails_it_naming_the_fix() -> None:
    result = run(listening_client({"edge2": SECRET}), dialing_server(token=("edge1", SECRET)))
    failed = only(result.client_events)
    assert isinstance(failed, Failed) and failed.label == "auth_failed"
    assert "'edge1'" in failed.text and "add its NAME:SECRET line" in failed.text


def test_a_wrong_secret_is_refused_by_the_server_and_a_relay_cannot_prove_it() -> None:
    result = run(listening_client({"edge1": b"y" * 20}), dialing_server(token=("edge1", SECRET)))
    refused = only(result.server_events)
    assert isinstance(refused, Refused) and refused.reason is Reason.AUTH_FAILED


def test_a_dialing_server_without_a_token_fails_a_client_that_holds_tokens() -> None:
    result = run(listening_client({"edge1": SECRET}), dialing_server())
    failed = only(result.client_events)
    assert isinstance(failed, Failed) and "without proving a token" in failed.text


def test_a_client_without_tokens_is_refused_by_a_server_that_proves_one() -> None:
    result = run(listening_client(), dialing_server(token=("edge1", SECRET)))
    refused = only(result.server_events)
    assert isinstance(refused, Refused) and "give the client --token-file" in refused.text


def test_a_client_that_does_not_listen_is_refused_by_a_dialing_server_in_words() -> None:
    """An older client's hello says nothing of listening: the refusal is its one line."""
    old = Hello((1, 2), "old-client", "ambassador/0.9")
    refused = dialing_server().receive(old).event
    assert isinstance(refused, Refused) and refused.reason is Reason.VERSION_MISMATCH
    assert "ambassador-client --listen" in refused.text and "older clients cannot" in refused.text


def test_a_listening_hello_to_a_server_that_did_not_dial_is_refused() -> None:
    result = run(listening_client(), make_server())
    refused = only(result.server_events)
    assert isinstance(refused, Refused) and "did not dial" in refused.text


def test_a_welcome_that_disagrees_about_who_dialed_fails_the_client() -> None:
    forward = make_client()
    failed = forward.receive(Welcome(2, "x", CATALOG, dialed=True)).event
    assert isinstance(failed, Failed) and "relaying" in failed.text
    listening = listening_client()
    failed = listening.receive(Welcome(2, "x", CATALOG)).event
    assert isinstance(failed, Failed) and "did not dial" in failed.text


def test_a_listening_clients_refusal_before_its_hello_turns_the_dialing_server_away() -> None:
    """What a listening client writes to a server its --allow-from refuses, unread: the
    server's own session opens the control stream, and its handshake reads the Refusal as
    the client's first word, not as a message to ignore; a Go Away follows."""

    wire = refusal_before_hello(Reason.NOT_ALLOWED, "not from here", listening_client=True)
    events = Session(Role.SERVER).receive_data(wire, 0.0)
    assert isinstance(events[0], StreamOpened) and events[0].stream_id == 1
    assert isinstance(events[-1], GoAwayReceived)
    data = b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived))
    (message,) = MessageReader().feed(data)
    server = dialing_server()
    step = server.receive(message)
    assert step.send == ()
    assert step.event == TurnedAway(Reason.NOT_ALLOWED, "not from here")
    # Turned away: a hello that came after all is not heard.
    hello = listening_client().hello
    assert server.receive(hello).event is None


def test_a_refusal_from_a_client_the_server_did_not_dial_is_ignored() -> None:
    assert make_server().receive(Refusal(Reason.NOT_ALLOWED, "no")).event is None
