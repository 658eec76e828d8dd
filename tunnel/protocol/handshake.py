"""The control handshake, one state machine per role: messages in, messages and events out.

The exchange on the control stream (``docs/protocol.md``)::

    client -> server   Hello      versions, name, and a token's name and nonce if it has one
    server -> client   Challenge  the server's nonce and the version chosen   (token only)
    client -> server   Auth       the client's proof                          (token only)
    server -> client   Welcome    version, identity, catalog (and the server's proof)
                    or Refusal    reason and text; a Go Away follows

(and, where the server dialed, ``client -> server Refusal`` in place of the hello: the
listening client refuses the server's source address; a Go Away follows)

then, on the client, :class:`CatalogChanged` and :class:`GoingAway` notices.

The roles are logical: the client is the side that opens streams for its consumers, the
server the side that offers services, whichever of the two dialed. When the server dialed
(``ambassador-server --connect`` to ``ambassador-client --listen``) the exchange is the same,
the client still speaking first; its hello says ``listening`` and names no token, since it
cannot know which of its tokens the host that dialed holds: the server names its own in the
challenge, and the welcome says ``dialed``. Each side checks that the other agrees on the
direction, so a relayed or misdirected connection is refused in words. Each machine is a
small table of states; a message a state does not expect from the peer is a protocol error
(:class:`Violation` on the server, :class:`Failed` on the client), except messages this version
does not act on, which are ignored so that later versions can add some.

Nothing here computes a proof or draws a nonce: the roles pass in their nonce and callables
built on :mod:`tunnel.security.auth`, which knows the secrets and the TLS channel binding.

Both roles' time limit is a :class:`Deadline` (the time passed in): the server gives the whole
hello the handshake timeout from the connection's start; the client gives each message the
server owes as long. The adapters only wake up at :attr:`Deadline.at`.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from tunnel.errors import Reason
from tunnel.protocol.frames import Flags, FrameType, GoAwayCode, encode_header
from tunnel.protocol.messages import (
    HEADER_VERSION,
    MAX_NAME,
    SUPPORTED_VERSIONS,
    Auth,
    CatalogChanged,
    Challenge,
    GoingAway,
    Hello,
    Message,
    Refusal,
    ServiceInfo,
    Welcome,
    encode_message,
    negotiate_version,
)
from tunnel.protocol.peertext import quoted, shown

# The first version whose token proofs cover the TLS channel binding. A token is never proved
# unbound over TLS: a man in the middle could strip the newer versions from the hello to get a
# proof it can relay.
BOUND_SINCE = 2


class State(enum.Enum):
    HELLO = "hello"  # server: waiting for the hello; client: the hello is sent
    CHALLENGED = "challenged"  # server: challenge sent; client: proof sent
    WELCOMED = "welcomed"
    REFUSED = "refused"  # server: said why; client: the handshake failed
    BROKEN = "broken"  # server: the peer broke the protocol, nothing more it says is heard


# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The session is up (server: the Welcome is being sent; client: it was received)."""

    welcome: Welcome
    token_name: str | None  # the token proved in this handshake, if any


@dataclass(frozen=True, slots=True)
class Refused:
    """Server: the hello is refused; the Refusal is being sent and the session must end."""

    reason: Reason
    text: str  # may quote the peer's names (escaped): still bound it when logging


@dataclass(frozen=True, slots=True)
class TurnedAway:
    """Server that dialed: the listening client refused it before any hello (its source
    address is not in the client's ``--allow-from``); a Go Away follows."""

    reason: Reason
    text: str  # the client's words: bound and escape them wherever they are shown


@dataclass(frozen=True, slots=True)
class Violation:
    """Server: the client broke the protocol; nothing is sent, the session must end."""

    text: str


@dataclass(frozen=True, slots=True)
class Failed:
    """Client: the handshake failed; close the tunnel with ``close_reason``."""

    label: str  # short reason for metrics ("auth_failed", "protocol_error", a Reason's label)
    text: str  # one line for the user, to follow the remote's name
    close_reason: str
    # The server refused this client (a Refusal): asking again as it is gets the same answer,
    # unlike a handshake cut short or timed out, which may be the path or a restart.
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Notice:
    """Client, after the welcome: the server sent a new catalog or is going away."""

    message: CatalogChanged | GoingAway


Event = Welcomed | Refused | TurnedAway | Violation | Failed | Notice


@dataclass(frozen=True, slots=True)
class Step:
    """What one received message leads to: messages to send (in order), then an event."""

    send: tuple[Message, ...] = ()
    event: Event | None = None


NOTHING = Step()


# ------------------------------------------------------------------ deadline


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a handshake that has not moved on has failed: ``timeout`` seconds after ``since``
    (times in the adapter's clock)."""

    timeout: float
    since: float

    @property
    def at(self) -> float:
        return self.since + self.timeout

    def passed(self, now: float) -> bool:
        return now >= self.at

    def no_hello(self) -> str:
        """Server: why a connection is closed that did not finish its hello in time."""
        return f"no hello within {self.timeout:g}s"

    def no_answer(self) -> Failed:
        """Client: the server did not send what it owed in time."""
        return Failed(
            "handshake_timeout",
            f"accepted the connection but did not answer the hello within {self.timeout:g}s; "
            "is it an ambassador-server?",
            "no answer to hello",
        )


# ------------------------------------------------------------------ server


@dataclass(frozen=True, slots=True)
class TokenAttempt:
    """A client's answer to a challenge, for the server's ``verify`` to check."""

    name: str
    client_nonce: bytes
    server_nonce: bytes
    version: int
    proof: bytes


# The server's own proof when ``attempt`` proves its token, else None (unknown or wrong).
Verify = Callable[[TokenAttempt], bytes | None]
# The catalog an identity is shown, or None when it may reach nothing (access rules).
Offer = Callable[[str], tuple[ServiceInfo, ...] | None]


class ServerHandshake:
    """The server's side of one control stream's handshake."""

    def __init__(
        self,
        *,
        server_name: str,
        nonce: bytes,
        identity: str,
        certified: bool,
        tokens: bool,
        bound: bool,
        verify: Verify,
        offer: Offer,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        stream_header: int = HEADER_VERSION,
        dialed: bool = False,
        own_token: str | None = None,
    ) -> None:
        """``identity``: the client's before any token (its certificate's name, or the
        anonymous one); ``certified``: it has a certificate, which a token does not override;
        ``tokens``: this server has a token file; ``bound``: the connection is TLS, whose
        binding token proofs must cover; ``dialed``: this server dialed the connection, and
        then ``own_token`` is the name of the token it proves (the client must hold it)."""
        self.state = State.HELLO
        self.stream_header = stream_header  # what the welcome asks streams to open with
        self.hello: Hello | None = None
        self.version = 0
        self.identity = identity
        self._server_name = server_name
        self._nonce = nonce
        self._certified = certified
        self._tokens = tokens
        self._bound = bound
        self._verify = verify
        self._offer = offer
        self._versions = versions
        self._dialed = dialed
        self._own_token = own_token if dialed else None

    @property
    def welcomed(self) -> bool:
        return self.state is State.WELCOMED

    def receive(self, message: Message) -> Step:
        if self.state is State.BROKEN or (self.state is State.REFUSED and self.hello is None):
            return NOTHING  # broken, or turned away: nothing more the peer says is heard
        if isinstance(message, Hello):
            if self.hello is not None:
                return self._violation("second hello on the control stream")
            return self._on_hello(message)
        if isinstance(message, Refusal) and self._dialed and self.hello is None:
            # The listening client's first word, in place of its hello: it refuses this server.
            self.state = State.REFUSED
            return Step((), TurnedAway(message.reason, message.text))
        if isinstance(message, Auth) and self.state is not State.WELCOMED:
            if self.state is not State.CHALLENGED:
                return self._violation("auth message without a challenge")
            return self._on_auth(message)
        return NOTHING  # messages this version does not act on (forward compatibility)

    def _on_hello(self, hello: Hello) -> Step:
        self.hello = hello
        version = negotiate_version(hello.versions)
        if version is None:
            return self._refuse(
                Reason.VERSION_MISMATCH,
                f"no common protocol version: client speaks {list(hello.versions)}, "
                f"server speaks {list(self._versions)}; upgrade the older side",
            )
        self.version = version
        if hello.listening != self._dialed:
            return self._refuse(Reason.VERSION_MISMATCH, _direction_mismatch(self._dialed))
        if self._dialed:
            return self._on_dialed_hello(hello)
        if hello.token_name is not None and self._tokens:
            if self._bound and version < BOUND_SINCE:
                return self._refuse(
                    Reason.VERSION_MISMATCH,
                    f"a token over TLS needs protocol {BOUND_SINCE}, which binds it to the "
                    f"TLS connection; the client speaks {list(hello.versions)}: upgrade the client",
                )
            self.state = State.CHALLENGED
            return Step((Challenge(self._nonce, version),))
        if self._tokens and not self._certified:
            return self._refuse(
                Reason.AUTH_FAILED,
                "this server requires a token or a client certificate; give the client "
                "--token-file (or --tls-cert/--tls-key)",
            )
        return self._welcome(b"", None)

    def _on_dialed_hello(self, hello: Hello) -> Step:
        """The hello of a client this server dialed: the server names the token, if any."""
        token = self._own_token
        if token is None:
            return self._welcome(b"", None)
        if not hello.nonce:
            return self._refuse(
                Reason.AUTH_FAILED,
                f"this server proves the token {quoted(token)} and the client has none; give "
                "the client --token-file holding that NAME:SECRET line",
            )
        if self._bound and self.version < BOUND_SINCE:
            return self._refuse(
                Reason.VERSION_MISMATCH,
                f"a token over TLS needs protocol {BOUND_SINCE}; upgrade the client",
            )
        self.state = State.CHALLENGED
        return Step((Challenge(self._nonce, self.version, token),))

    def _on_auth(self, message: Auth) -> Step:
        hello = self.hello
        assert hello is not None  # CHALLENGED says so
        name = self._own_token if self._dialed else hello.token_name
        assert name is not None
        attempt = TokenAttempt(name, hello.nonce, self._nonce, self.version, message.proof)
        proof = self._verify(attempt)
        if proof is None:
            # A right token proved on another TLS connection fails here too: the server cannot
            # tell the two apart, so the line names both.
            relayed = (
                ", or the client proved it to another TLS endpoint that relays this connection "
                "(channel binding mismatch: a man in the middle?)"
                if self._bound
                else ""
            )
            return self._refuse(
                Reason.AUTH_FAILED, f"wrong or unknown token for {quoted(name)}{relayed}"
            )
        if not self._certified:
            self.identity = name
        return self._welcome(proof, name)

    def _welcome(self, proof: bytes, token_name: str | None) -> Step:
        catalog = self._offer(self.identity)
        if catalog is None:
            return self._refuse(
                Reason.NOT_ALLOWED, f"{quoted(self.identity)} may reach no service here"
            )
        self.state = State.WELCOMED
        identity = self.identity[:MAX_NAME]  # the client's to show: which identity we saw
        welcome = Welcome(
            self.version,
            self._server_name,
            catalog,
            proof,
            identity,
            stream_header=self.stream_header,
            dialed=self._dialed,
        )
        return Step((welcome,), Welcomed(welcome, token_name))

    def _refuse(self, reason: Reason, text: str) -> Step:
        self.state = State.REFUSED
        return Step((Refusal(reason, text),), Refused(reason, text))

    def _violation(self, text: str) -> Step:
        self.state = State.BROKEN
        return Step((), Violation(text))


def _direction_mismatch(dialed: bool) -> str:
    """The refusal when the hello disagrees about who dialed: a client that does not listen
    (or is too old to: its hello says nothing) was reached by a dialing server, or a client
    that listens reached a server that did not dial (something relays the connection)."""
    if dialed:
        return (
            "this server dialed the client (ambassador-server --connect), but the client's "
            "hello does not say it listens: run ambassador-client --listen of a release that "
            "takes dials (older clients cannot)"
        )
    return (
        "the client says it accepted this connection (--listen), but this server did not dial "
        "it: point ambassador-server --connect at the client instead of relaying"
    )


# ------------------------------------------------------------------ client


@dataclass(frozen=True, slots=True)
class TokenProofs:
    """For one challenge: the client's proof, and the one the server must answer with."""

    client: bytes
    server: bytes


# The proofs for a challenge of ``version`` with the server's ``nonce`` (the client's token,
# nonce and channel binding are the callable's to know).
Prove = Callable[[int, bytes], TokenProofs]
# A listening client's proofs of the token a dialing server names, or None if it holds none
# of that name: (name, version, server nonce).
ProveNamed = Callable[[str, int, bytes], TokenProofs | None]


class ClientHandshake:
    """The client's side of the handshake: :attr:`hello` to send, then what comes back."""

    def __init__(
        self,
        *,
        name: str,
        software: str,
        token_name: str | None = None,
        nonce: bytes = b"",
        bound: bool = False,
        listening: bool = False,
        prove: Prove | None = None,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        prove_named: ProveNamed | None = None,
    ) -> None:
        """``token_name``, ``nonce`` and ``prove``: the token this client authenticates with;
        ``bound``: the connection is TLS (a token is then offered only bound versions).

        ``prove_named`` makes this the handshake of a listening client, which a server
        dialed (the ``listening`` hello): with it, the client holds tokens (and ``nonce``) and
        the server names the one it proves; without it and without a token, ``listening``."""
        self.listening = prove_named is not None or listening
        if (token_name is not None or prove_named is not None) and bound:
            # A token over TLS is proved only bound to it: offering version 1 as well would
            # let a man in the middle pick it (docs/protocol.md).
            versions = tuple(v for v in versions if v >= BOUND_SINCE)
        self.versions = versions
        self.state = State.HELLO
        self._token_name = token_name
        self._bound = bound
        self._prove = prove
        self._expected = b""  # the server's proof, once the challenge came
        self._version = 0
        self._prove_named = prove_named
        if self.listening:
            token_name = None  # the dialing server names it
        held = token_name is not None or prove_named is not None
        self.hello = Hello(versions, name, software, token_name, nonce if held else b"",
                           self.listening)  # fmt: skip

    @property
    def welcomed(self) -> bool:
        return self.state is State.WELCOMED

    @property
    def done(self) -> bool:
        """Welcomed or failed: the handshake takes no more messages."""
        return self.state in (State.WELCOMED, State.REFUSED)

    def receive(self, message: Message) -> Step:
        if self.state is State.WELCOMED:
            if isinstance(message, CatalogChanged | GoingAway):
                return Step((), Notice(message))
            return NOTHING  # messages this version does not act on
        if self.state is State.REFUSED:
            return NOTHING
        if isinstance(message, Challenge) and self._prove_named is not None:
            named = self._named_challenge(message)
            if named is not None:
                return named
        token = self._token_name
        if isinstance(message, Challenge) and token is not None and self.state is State.HELLO:
            return self._on_challenge(message, token)
        if isinstance(message, Welcome):
            if message.dialed != self.listening:
                return self._fail("protocol_error", _welcome_mismatch(self.listening),
                                  "dialing direction mismatch")  # fmt: skip
            if token is None and self._prove_named is not None:
                return self._fail(
                    "auth_failed",
                    "dialed without proving a token: it runs without --token-file, so it "
                    "cannot prove which host it is; give it its NAME:SECRET line",
                    "server skipped the token exchange",
                )
            if token is None:
                return self._welcomed(message)
            if self.state is State.HELLO:
                return self._fail(
                    "auth_failed",
                    f"did not ask for the token {token!r}: it runs without --token-file, so "
                    "it cannot prove it is the right server",
                    "server skipped the token exchange",
                )
            if message.version != self._version or not hmac.compare_digest(
                self._expected, message.proof
            ):
                relayed = " (or is the connection relayed?)" if self._bound else ""
                return self._fail(
                    "auth_failed",
                    f"did not prove it knows the token {token!r}; is it the right server{relayed}?",
                    "server proof mismatch",
                )
            return self._welcomed(message)
        if isinstance(message, Refusal):
            self.state = State.REFUSED
            text = f"refused this client: {shown(message.text)}"
            return Step((), Failed(message.reason.label, text, "hello refused", refused=True))
        return self._fail(
            "protocol_error", f"answered the hello with {type(message).__name__}", "hello refused"
        )

    def _named_challenge(self, message: Challenge) -> Step | None:
        """A listening client's challenge: take the token the server names; None to go on
        as with any token, a failure if it names none this client holds."""
        if self.state is not State.HELLO:
            return None
        name = message.token_name
        if name is None:
            return self._fail("protocol_error", "challenged without naming its token",
                              "challenge without a token name")  # fmt: skip
        self._token_name = name
        assert self._prove_named is not None
        prove_named = self._prove_named
        self._prove = lambda version, nonce: prove_named(name, version, nonce) or _NO_PROOFS
        if prove_named(name, message.version, message.nonce) is None:
            return self._fail(
                "auth_failed",
                f"proves the token {quoted(name)}, which --token-file does not hold; add its "
                "NAME:SECRET line to this client's token file",
                "unknown token",
            )
        return None

    def _on_challenge(self, message: Challenge, token: str) -> Step:
        version = message.version
        if version not in self.versions:
            return self._fail(
                "protocol_error",
                f"asked for a token proof of protocol {version}, which this client did not "
                f"offer ({list(self.versions)}); is something in the path rewriting the hello?",
                "challenge of a version not offered",
            )
        assert self._prove is not None, "a token needs its prove callable"
        proofs = self._prove(version, message.nonce)
        self._version, self._expected = version, proofs.server
        self.state = State.CHALLENGED
        return Step((Auth(proofs.client),))

    def _welcomed(self, welcome: Welcome) -> Step:
        self.state = State.WELCOMED
        return Step((), Welcomed(welcome, self._token_name))

    def _fail(self, label: str, text: str, close_reason: str) -> Step:
        self.state = State.REFUSED
        return Step((), Failed(label, text, close_reason))


_NO_PROOFS = TokenProofs(b"", b"")


def _welcome_mismatch(listening: bool) -> str:
    if listening:
        return (
            "answered as a server that did not dial this client: is something relaying it? "
            "Point ambassador-server --connect at this client's --listen address"
        )
    return (
        "says it dialed this client, which dialed it: is something relaying the connection? "
        "Point --remote at the ambassador-server's --listen address"
    )


# The stream a client's hello goes on: the first it opens (docs/protocol.md, section 2).
CONTROL_STREAM = 1


def refusal_before_hello(reason: Reason, text: str, *, listening_client: bool = False) -> bytes:
    """The whole answer to a connection refused before a byte of it is read (its source
    address is not allowed), costing the listener one write.

    Server: the client's control stream accepted, a Refusal on it, then a Go Away. Every
    client opens its control stream first and sends the hello without waiting, so it reads
    this as the answer to its hello, and can tell a refusal (the same next time) from a
    connection that merely dropped.

    ``listening_client``: a client with ``--listen`` refusing a server that dialed it. The
    client opens the control stream (it always does), so it opens it here with the Refusal
    in place of its hello, then a Go Away; the dialing server reads the Refusal as the
    client's first word and gives up this attempt in words (:class:`TurnedAway`)."""
    message = encode_message(Refusal(reason, text))
    if listening_client:
        opening = encode_header(FrameType.DATA, Flags.SYN, CONTROL_STREAM, len(message))
        frames: tuple[bytes, ...] = (opening, message)
    else:
        frames = (
            encode_header(FrameType.WINDOW_UPDATE, Flags.ACK, CONTROL_STREAM, 0),
            encode_header(FrameType.DATA, Flags.NONE, CONTROL_STREAM, len(message)),
            message,
        )
    return b"".join((*frames, encode_header(FrameType.GO_AWAY, Flags.NONE, 0, GoAwayCode.NORMAL)))
