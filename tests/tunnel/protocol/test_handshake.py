"""Tests for tunnel.protocol.handshake: a client and a server machine joined in memory.

The proofs are the real ones (tunnel.security.auth), the same the roles pass in; nothing here
opens a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.errors import Reason
from tunnel.protocol.events import DataReceived, GoAwayReceived
from tunnel.protocol.handshake import (
    BOUND_SINCE,
    ClientHandshake,
    Deadline,
    Event,
    Failed,
    Notice,
    Refused,
    ServerHandshake,
    Step,
    TokenAttempt,
    TokenProofs,
    Violation,
    Welcomed,
    refusal_before_hello,
)
from tunnel.protocol.messages import (
    SUPPORTED_VERSIONS,
    Auth,
    CatalogChanged,
    Challenge,
    GoingAway,
    Hello,
    Message,
    MessageReader,
    Refusal,
    ServiceInfo,
    Welcome,
)
from tunnel.protocol.session import Role, Session
from tunnel.security import auth

CATALOG = (ServiceInfo("redis", 6379), ServiceInfo(None, 8080))
SECRET = b"s3cret-s3cret-s3cret"
BINDING = b"\x01" * 32
CLIENT_NONCE = b"c" * auth.NONCE_SIZE
SERVER_NONCE = b"s" * auth.NONCE_SIZE


def make_server(
    *,
    tokens: dict[str, bytes] | None = None,
    binding: bytes = b"",
    cert_name: str | None = None,
    offer: dict[str, tuple[ServiceInfo, ...] | None] | None = None,
    proof_override: bytes | None = None,
) -> ServerHandshake:
    """A server as server/connection.py builds one: ``tokens`` its token file, ``binding``
    the TLS channel binding (empty: plaintext), ``offer`` per identity (default: all)."""

    def verify(attempt: TokenAttempt) -> bytes | None:
        secret = None if tokens is None else tokens.get(attempt.name)
        if secret is None:
            return None
        expected = auth.client_proof(secret, attempt.name, attempt.client_nonce,
                                     attempt.server_nonce, version=attempt.version,
                                     binding=binding)  # fmt: skip
        if not auth.proofs_match(expected, attempt.proof):
            return None
        if proof_override is not None:
            return proof_override
        return auth.server_proof(secret, attempt.name, attempt.client_nonce,
                                 attempt.server_nonce, version=attempt.version,
                                 binding=binding)  # fmt: skip

    def offered(identity: str) -> tuple[ServiceInfo, ...] | None:
        return CATALOG if offer is None else offer.get(identity, CATALOG)

    return ServerHandshake(
        server_name="server-a",
        nonce=SERVER_NONCE,
        identity=cert_name or "anonymous",
        certified=cert_name is not None,
        tokens=tokens is not None,
        bound=bool(binding),
        verify=verify,
        offer=offered,
    )


def make_client(
    *,
    token: tuple[str, bytes] | None = None,
    binding: bytes = b"",
    tls: bool | None = None,
    versions: tuple[int, ...] = SUPPORTED_VERSIONS,
) -> ClientHandshake:
    """A client as client/connector.py builds one; ``tls`` defaults to having a binding."""

    def prove(version: int, server_nonce: bytes) -> TokenProofs:
        assert token is not None
        name, secret = token
        args = (secret, name, CLIENT_NONCE, server_nonce)
        return TokenProofs(
            auth.client_proof(*args, version=version, binding=binding),
            auth.server_proof(*args, version=version, binding=binding),
        )

    return ClientHandshake(
        name="client-b",
        software="ambassador/test",
        token_name=token[0] if token else None,
        nonce=CLIENT_NONCE if token else b"",
        bound=bool(binding) if tls is None else tls,
        prove=prove if token else None,
        versions=versions,
    )


@dataclass
class Run:
    client_events: list[Event] = field(default_factory=list)
    server_events: list[Event] = field(default_factory=list)
    wire: list[Message] = field(default_factory=list)  # every message, in order


def run(client: ClientHandshake, server: ServerHandshake) -> Run:
    """Move messages between the two until neither has anything to send."""
    result = Run()
    to_server: list[Message] = [client.hello]
    while to_server:
        to_client: list[Message] = []
        for message in to_server:
            result.wire.append(message)
            step = server.receive(message)
            to_client += step.send
            if step.event is not None:
                result.server_events.append(step.event)
        to_server = []
        for message in to_client:
            result.wire.append(message)
            step = client.receive(message)
            to_server += step.send
            if step.event is not None:
                result.client_events.append(step.event)
    return result


def only(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


# ------------------------------------------------------------------ success


def test_anonymous_hello_is_welcomed_with_the_catalog() -> None:
    client, server = make_client(), make_server()
    result = run(client, server)
    assert [type(m) for m in result.wire] == [Hello, Welcome]
    welcomed = only(result.client_events)
    assert isinstance(welcomed, Welcomed)
    assert welcomed.welcome == Welcome(2, "server-a", CATALOG, b"", "anonymous")
    assert only(result.server_events) == welcomed
    assert client.welcomed and server.welcomed


def test_a_certificate_is_the_identity_without_a_token_even_when_tokens_exist() -> None:
    server = make_server(tokens={"alice": SECRET}, binding=BINDING, cert_name="cert-bob")
    result = run(make_client(tls=True), server)
    welcomed = only(result.client_events)
    assert isinstance(welcomed, Welcomed)
    assert welcomed.welcome.identity == "cert-bob"


def test_a_certificate_stays_the_identity_when_a_token_is_proved_too() -> None:
    server = make_server(tokens={"alice": SECRET}, binding=BINDING, cert_name="cert-bob")
    result = run(make_client(token=("alice", SECRET), binding=BINDING), server)
    welcomed = only(result.server_events)
    assert isinstance(welcomed, Welcomed)
    assert (welcomed.welcome.identity, welcomed.token_name) == ("cert-bob", "alice")


def test_token_over_tls_is_proved_with_version_2_bound_to_the_channel() -> None:
    client = make_client(token=("alice", SECRET), binding=BINDING)
    assert client.hello.versions == (2,)  # never offers the unbound version over TLS
    result = run(client, make_server(tokens={"alice": SECRET}, binding=BINDING))
    assert [type(m) for m in result.wire] == [Hello, Challenge, Auth, Welcome]
    challenge = result.wire[1]
    assert challenge == Challenge(SERVER_NONCE, 2)
    welcomed = only(result.client_events)
    assert isinstance(welcomed, Welcomed)
    assert welcomed.welcome.version == 2
    assert welcomed.welcome.identity == "alice"
    assert welcomed.welcome.proof == auth.server_proof(
        SECRET, "alice", CLIENT_NONCE, SERVER_NONCE, version=2, binding=BINDING
    )


def test_token_with_version_1_over_plaintext() -> None:
    client = make_client(token=("alice", SECRET), versions=(1,))
    result = run(client, make_server(tokens={"alice": SECRET}))
    welcomed = only(result.client_events)
    assert isinstance(welcomed, Welcomed)
    assert (welcomed.welcome.version, welcomed.welcome.identity) == (1, "alice")


def test_after_the_welcome_the_client_passes_catalog_changes_and_going_away_on() -> None:
    client = make_client()
    run(client, make_server())
    changed = CatalogChanged(CATALOG[:1])
    assert client.receive(changed) == Step((), Notice(changed))
    going = GoingAway(Reason.SHUTTING_DOWN, "bye")
    assert client.receive(going) == Step((), Notice(going))
    assert client.receive(Challenge(b"x")) == Step()  # not acted on once up


# ------------------------------------------------------------------ refusals


def refusal(result: Run) -> tuple[Refused, Failed]:
    refused, failed = only(result.server_events), only(result.client_events)
    assert isinstance(refused, Refused) and isinstance(failed, Failed)
    assert isinstance(result.wire[-1], Refusal)
    assert failed.label == refused.reason.label
    assert failed.close_reason == "hello refused"
    return refused, failed


def test_unknown_token_is_refused() -> None:
    client = make_client(token=("mallory", SECRET))
    refused, failed = refusal(run(client, make_server(tokens={"alice": SECRET})))
    assert refused.reason is Reason.AUTH_FAILED
    assert refused.text == "wrong or unknown token for 'mallory'"
    assert failed.text == "refused this client: wrong or unknown token for 'mallory'"


def test_wrong_proof_is_refused() -> None:
    client = make_client(token=("alice", b"not-the-secret-at-all"))
    refused, _ = refusal(run(client, make_server(tokens={"alice": SECRET})))
    assert refused.reason is Reason.AUTH_FAILED


def test_a_proof_bound_to_another_channel_is_refused_and_the_line_says_relayed() -> None:
    client = make_client(token=("alice", SECRET), binding=b"\x02" * 32)
    refused, _ = refusal(run(client, make_server(tokens={"alice": SECRET}, binding=BINDING)))
    assert refused.reason is Reason.AUTH_FAILED
    assert "channel binding mismatch" in refused.text


@pytest.mark.parametrize("versions", [(3,), (0, 7), ()])
def test_no_common_version_is_refused(versions: tuple[int, ...]) -> None:
    refused, failed = refusal(run(make_client(versions=versions), make_server()))
    assert refused.reason is Reason.VERSION_MISMATCH
    assert "no common protocol version" in refused.text
    assert failed.label == "version_mismatch"


def test_a_version_1_token_hello_over_tls_is_refused_upgrade_the_client() -> None:
    client = make_client(token=("alice", SECRET), versions=(1,), tls=False)  # an old client
    server = make_server(tokens={"alice": SECRET}, binding=BINDING)
    refused, _ = refusal(run(client, server))
    assert refused.reason is Reason.VERSION_MISMATCH
    assert refused.text.endswith("upgrade the client")


def test_a_token_is_required_without_a_certificate() -> None:
    refused, _ = refusal(run(make_client(), make_server(tokens={"alice": SECRET})))
    assert refused.reason is Reason.AUTH_FAILED
    assert "requires a token or a client certificate" in refused.text


def test_an_identity_that_may_reach_nothing_is_refused() -> None:
    server = make_server(offer={"anonymous": None})
    refused, _ = refusal(run(make_client(), server))
    assert refused.reason is Reason.NOT_ALLOWED
    assert refused.text == "'anonymous' may reach no service here"


# ------------------------------------------------------------ the client checks the server


def test_a_server_that_cannot_prove_the_token_fails_the_client() -> None:
    server = make_server(tokens={"alice": SECRET}, binding=BINDING, proof_override=b"\0" * 32)
    result = run(make_client(token=("alice", SECRET), binding=BINDING), server)
    failed = only(result.client_events)
    assert isinstance(failed, Failed)
    assert (failed.label, failed.close_reason) == ("auth_failed", "server proof mismatch")
    assert failed.text.endswith("is it the right server (or is the connection relayed?)?")
    assert not client_up(result)


def client_up(result: Run) -> bool:
    return any(isinstance(e, Welcomed) for e in result.client_events)


def test_a_server_without_tokens_fails_a_client_with_one() -> None:
    result = run(make_client(token=("alice", SECRET)), make_server())
    failed = only(result.client_events)
    assert isinstance(failed, Failed)
    assert failed.close_reason == "server skipped the token exchange"


def test_a_challenge_of_a_version_not_offered_fails_the_client() -> None:
    client = make_client(token=("alice", SECRET), binding=BINDING)
    step = client.receive(Challenge(SERVER_NONCE, 1))
    assert step.send == ()
    assert isinstance(step.event, Failed)
    assert step.event.close_reason == "challenge of a version not offered"
    assert step.event.label == "protocol_error"


# ------------------------------------------------------------------ out of order, server


def violation(step: Step) -> str:
    assert step.send == ()
    assert isinstance(step.event, Violation)
    return step.event.text


def test_auth_before_hello_is_a_protocol_error() -> None:
    server = make_server(tokens={"alice": SECRET})
    assert violation(server.receive(Auth(b"x"))) == "auth message without a challenge"
    assert server.receive(make_client().hello) == Step()  # broken: nothing more is heard


def test_auth_without_a_challenge_is_a_protocol_error() -> None:
    server = make_server(tokens={"alice": SECRET})
    refused = server.receive(make_client().hello)  # refused: a token is required
    assert isinstance(refused.event, Refused)
    assert violation(server.receive(Auth(b"x"))) == "auth message without a challenge"


def test_a_second_auth_after_a_refused_one_is_a_protocol_error() -> None:
    server = make_server(tokens={"alice": SECRET})
    server.receive(make_client(token=("alice", SECRET)).hello)
    assert isinstance(server.receive(Auth(b"wrong")).event, Refused)
    assert violation(server.receive(Auth(b"again"))) == "auth message without a challenge"


@pytest.mark.parametrize("token", [False, True])
def test_a_second_hello_is_a_protocol_error_during_and_after_the_handshake(token: bool) -> None:
    client = make_client(token=("alice", SECRET) if token else None)
    server = make_server(tokens={"alice": SECRET} if token else None)
    server.receive(client.hello)  # a challenge (token) or the welcome
    assert violation(server.receive(client.hello)) == "second hello on the control stream"


def test_auth_after_the_welcome_and_server_messages_from_the_client_are_ignored() -> None:
    server = make_server()
    for message in (Welcome(2, "x", ()), Challenge(b"n"), Refusal(Reason.OK, ""),
                    CatalogChanged(()), GoingAway(Reason.OK, "")):  # fmt: skip
        assert server.receive(message) == Step()
    assert isinstance(server.receive(make_client().hello).send[0], Welcome)
    assert server.receive(Auth(b"late")) == Step()
    assert server.welcomed


# ------------------------------------------------------------------ out of order, client


def failure(step: Step) -> Failed:
    assert step.send == ()
    assert isinstance(step.event, Failed)
    return step.event


def test_welcome_before_the_challenge_fails_a_client_with_a_token() -> None:
    client = make_client(token=("alice", SECRET), binding=BINDING)
    failed = failure(client.receive(Welcome(2, "x", CATALOG)))
    assert failed.close_reason == "server skipped the token exchange"
    assert client.receive(Welcome(2, "x", CATALOG)) == Step()  # failed: nothing more is heard


@pytest.mark.parametrize(
    "message",
    [
        Challenge(SERVER_NONCE, 2),
        CatalogChanged(CATALOG),
        GoingAway(Reason.SHUTTING_DOWN, ""),
        Auth(b"x"),
        Hello((2,), "x"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_anything_but_welcome_or_refusal_answering_a_plain_hello_fails(message: Message) -> None:
    failed = failure(make_client().receive(message))
    assert (failed.label, failed.close_reason) == ("protocol_error", "hello refused")
    assert failed.text == f"answered the hello with {type(message).__name__}"


def test_a_second_challenge_fails_the_client() -> None:
    client = make_client(token=("alice", SECRET))
    assert [type(m) for m in client.receive(Challenge(SERVER_NONCE, 2)).send] == [Auth]
    failed = failure(client.receive(Challenge(SERVER_NONCE, 2)))
    assert failed.text == "answered the hello with Challenge"


def test_a_refusal_after_the_proof_fails_with_its_reason() -> None:
    client = make_client(token=("alice", SECRET))
    client.receive(Challenge(SERVER_NONCE, 2))
    failed = failure(client.receive(Refusal(Reason.AUTH_FAILED, "no\nway")))
    assert failed.label == "auth_failed"
    assert failed.text == "refused this client: no\\nway"  # the peer's text, escaped


# ------------------------------------------------------------------ version negotiation


@given(st.lists(st.integers(0, 6), max_size=6).map(tuple), st.booleans(), st.booleans())
def test_version_negotiation(offered: tuple[int, ...], token: bool, tls: bool) -> None:
    client = make_client(
        token=("alice", SECRET) if token else None,
        binding=BINDING if tls else b"",
        versions=offered,
    )
    server = make_server(
        tokens={"alice": SECRET} if token else None, binding=BINDING if tls else b""
    )
    result = run(client, server)
    common = set(client.hello.versions) & set(SUPPORTED_VERSIONS)
    event = only(result.client_events)
    if not common:
        assert isinstance(event, Failed) and event.label == "version_mismatch"
    else:
        assert isinstance(event, Welcomed)
        assert event.welcome.version == max(common)
        if token and tls:
            assert event.welcome.version >= BOUND_SINCE


def test_the_deadline_passes_exactly_its_timeout_after_its_start() -> None:
    deadline = Deadline(timeout=2.5, since=100.0)
    assert deadline.at == 102.5
    assert not deadline.passed(102.4)
    assert deadline.passed(102.5)
    assert deadline.no_hello() == "no hello within 2.5s"  # the server's line


def test_a_passed_deadline_is_the_clients_handshake_timeout_failure() -> None:
    failed = Deadline(timeout=5.0, since=0.0).no_answer()
    assert failed.label == "handshake_timeout"
    assert failed.text == (
        "accepted the connection but did not answer the hello within 5s; "
        "is it an ambassador-server?"
    )
    assert failed.close_reason == "no answer to hello"


def test_a_refusal_before_the_hello_reads_as_the_answer_to_the_clients_hello() -> None:
    """What a server writes to a source its --allow-from refuses, unread: the client's own
    session and handshake take it as a refusal (the same next time), not a dropped line."""
    session, client = Session(Role.CLIENT), make_client()
    control = session.open_stream()
    session.send_data(control, b"hello")
    events = session.receive_data(refusal_before_hello(Reason.NOT_ALLOWED, "not from here"), 0.0)
    data = b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived))
    assert any(isinstance(e, GoAwayReceived) for e in events)
    (message,) = MessageReader().feed(data)
    failed = client.receive(message).event
    assert isinstance(failed, Failed) and failed.refused
    assert (failed.label, failed.text) == ("not_allowed", "refused this client: not from here")


def test_a_handshake_failure_of_the_clients_own_is_not_a_refusal() -> None:
    client = make_client(token=("alice", SECRET))
    failed = client.receive(Welcome(1, "server-a", ())).event  # no proof: the client judges
    assert isinstance(failed, Failed) and not failed.refused
