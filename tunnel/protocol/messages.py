"""The application layer spoken inside yamux streams (see ``docs/protocol.md``).

Two kinds of stream exist:

* the **control stream**, the first stream the client opens, carries length-prefixed JSON
  messages: the client's :class:`Hello`, the server's :class:`Welcome` (its catalog) or
  :class:`Refusal`, and later notices such as :class:`CatalogChanged` and :class:`GoingAway`;
* every other stream is one consumer connection. It starts with a :class:`StreamHeader` naming
  the service; the client may send the consumer's first bytes right behind it, so opening a
  stream costs no round trip. The server's first bytes are a :class:`StreamAnswer`: ``OK`` and
  then the backend's data, or a reason code and text followed by an RST.

Parsers here are incremental and raise :class:`~tunnel.errors.RemoteProtocolError` on anything
malformed; JSON fields that a receiver does not know are ignored, which is what lets later
versions add fields without breaking older peers.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from tunnel.errors import Reason, RemoteProtocolError
from tunnel.protocol.origin import Origin, decode_origin, encode_origin
from tunnel.protocol.peertext import quoted

# Version 2 binds token proofs to the TLS channel (tunnel.security.auth, tunnel.security.binding);
# version 1 is still spoken where it is safe: without a token, and with a token over plaintext.
SUPPORTED_VERSIONS = (1, 2)
HEADER_VERSION = 1
# A stream header of version 2 carries extensions after the service (docs/protocol.md). A
# client sends it only to a server whose welcome says it reads it (``stream_header``), so an
# older server never sees one; an older client never sends one, and is read as before.
EXTENDED_HEADER_VERSION = 2
MAX_EXTENSIONS = 512  # bytes of extensions in one stream header, checked before they are kept
EXTENSION_ORIGIN = 1  # the consumer's endpoints (tunnel.protocol.origin)
MAX_MESSAGE = 1024 * 1024
MAX_ANSWER_TEXT = 1024
# A name a peer declares (its own, its token's, the server's) and the version list of a hello
# are bounded here, before anything logs or stores them: one hello could otherwise hold a
# megabyte of name, or thousands of many-digit version numbers.
MAX_NAME = 255
MAX_VERSIONS = 16
MAX_VERSION = 0xFFFF
# What a client takes from a catalog. Entries beyond the first MAX_CATALOG, and entries that are
# not a port 1..65535 with, optionally, an alias as the server writes them (tunnel.settings.links: a
# letter, then letters, digits, '-' or '_', at most 63, lower case), or an alias with a null port
# (a unix socket linked by alias alone; a client before it skips such an entry), are skipped and
# counted:
# the client warns once and uses the rest, rather than binding a name it cannot show or crashing.
MAX_CATALOG = 4096
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,62}")
TRANSPORTS = ("tcp", "udp")

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_ANSWER = struct.Struct(">BH")


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """One catalog entry as the client sees it: never the backend's address."""

    alias: str | None
    port: int | None  # None: reached by the alias alone (a unix socket linked without a port)
    # "udp": reached by datagram flows (tunnel.protocol.datagrams). Sent only for UDP, so an
    # older client, which ignores the field, sees a TCP catalog as before.
    transport: str = "tcp"

    @property
    def name(self) -> str:
        return self.alias if self.alias is not None else str(self.port)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"alias": self.alias, "port": self.port}
        if self.transport != "tcp":
            entry["transport"] = self.transport
        return entry


@dataclass(frozen=True, slots=True)
class Hello:
    """client -> server, first message on the control stream."""

    versions: tuple[int, ...]
    name: str  # the client's self-declared name (identity comes from TLS or a token)
    software: str = ""
    token_name: str | None = None  # set: the client authenticates with this token
    nonce: bytes = b""  # the client's nonce for the token exchange
    # The client accepted this connection (ambassador-client --listen): the server dialed it.
    # Such a client names no token; a dialing server names its own in the challenge.
    listening: bool = False


@dataclass(frozen=True, slots=True)
class Welcome:
    """server -> client: the session is up; here is what you may reach."""

    version: int
    server: str
    catalog: tuple[ServiceInfo, ...]
    proof: bytes = b""  # the server's token proof, when the client authenticated with one
    identity: str = ""  # the identity the server gave the client (its access rules use it)
    skipped: int = 0  # catalog entries the decoder left out (never sent: counted on receipt)
    # The stream header version the server wants: 2 (with the consumer's origin) when a
    # backend of its needs the origin, else 1. Absent (an older server): 1.
    stream_header: int = HEADER_VERSION
    dialed: bool = False  # the server dialed this connection (ambassador-server --connect)


@dataclass(frozen=True, slots=True)
class Challenge:
    """server -> client: prove you hold the token (see tunnel.security.auth)."""

    nonce: bytes
    version: int = 1  # the version chosen, which says how to make the proof (absent: 1)
    token_name: str | None = None  # a dialing server's own token, which the client must hold


@dataclass(frozen=True, slots=True)
class Auth:
    """client -> server: the answer to a challenge."""

    proof: bytes


@dataclass(frozen=True, slots=True)
class Refusal:
    """server -> client: the hello is refused; a Go Away follows."""

    reason: Reason
    text: str


@dataclass(frozen=True, slots=True)
class CatalogChanged:
    """server -> client: the catalog was reloaded."""

    catalog: tuple[ServiceInfo, ...]
    skipped: int = 0  # catalog entries the decoder left out (never sent: counted on receipt)
    # As in Welcome: the stream header version the server wants from now on (absent: 1).
    stream_header: int = HEADER_VERSION


@dataclass(frozen=True, slots=True)
class GoingAway:
    """either way: this end is closing the session, and why."""

    reason: Reason
    text: str


Message = Hello | Welcome | Challenge | Auth | Refusal | CatalogChanged | GoingAway


def encode_message(message: Message) -> bytes:
    """One control message: a 4-byte big-endian length, then a JSON object."""
    body = json.dumps(_to_json(message), separators=(",", ":")).encode()
    return _U32.pack(len(body)) + body


def _to_json(message: Message) -> dict[str, Any]:
    if isinstance(message, Hello):
        hello: dict[str, Any] = {
            "type": "hello",
            "versions": list(message.versions),
            "name": message.name,
            "software": message.software,
        }
        if message.token_name is not None:
            hello["token_name"] = message.token_name
        if message.nonce:
            hello["nonce"] = _b64(message.nonce)
        if message.listening:
            hello["listening"] = True
        return hello
    if isinstance(message, Welcome):
        catalog = [s.to_json() for s in message.catalog]
        welcome: dict[str, Any] = {
            "type": "welcome",
            "version": message.version,
            "server": message.server,
            "catalog": catalog,
        }
        if message.proof:
            welcome["proof"] = _b64(message.proof)
        if message.identity:
            welcome["identity"] = message.identity
        if message.stream_header != HEADER_VERSION:
            welcome["stream_header"] = message.stream_header
        if message.dialed:
            welcome["dialed"] = True
        return welcome
    if isinstance(message, Challenge):
        challenge: dict[str, Any] = {"type": "challenge", "nonce": _b64(message.nonce),
                                     "version": message.version}  # fmt: skip
        if message.token_name is not None:
            challenge["token_name"] = message.token_name
        return challenge
    if isinstance(message, Auth):
        return {"type": "auth", "proof": _b64(message.proof)}
    if isinstance(message, CatalogChanged):
        return {
            "type": "catalog",
            "catalog": [s.to_json() for s in message.catalog],
            "stream_header": message.stream_header,
        }
    kind = "refusal" if isinstance(message, Refusal) else "going_away"
    return {"type": kind, "reason": int(message.reason), "text": message.text}


@dataclass
class MessageReader:
    """Splits the control stream into messages."""

    _buffer: bytearray = field(default_factory=bytearray)
    max_message: int = MAX_MESSAGE  # larger is a protocol error, before any of it is kept

    def feed(self, data: bytes | bytearray) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= 4:
            (length,) = _U32.unpack_from(self._buffer)
            if length > self.max_message:
                raise RemoteProtocolError(f"control message of {length} bytes is too large")
            if len(self._buffer) < 4 + length:
                break
            body = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            messages.append(decode_message(body))
        return messages


def decode_message(body: bytes) -> Message:
    try:
        obj = json.loads(body)
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        return _from_json(obj)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # RecursionError: deeply nested JSON is garbage too, not a crash.
        raise RemoteProtocolError(f"malformed control message: {exc!r}") from None


def _from_json(obj: dict[str, Any]) -> Message:
    kind = obj["type"]
    if kind == "hello":
        listed = obj["versions"]
        if not isinstance(listed, list) or len(listed) > MAX_VERSIONS:
            raise ValueError(f"versions must be a list of at most {MAX_VERSIONS}")
        versions = tuple(_version(v) for v in listed)
        token_name = obj.get("token_name")
        return Hello(
            versions,
            _name(obj["name"]),
            _name(obj.get("software", "")),
            None if token_name is None else _name(token_name),
            _unb64(obj.get("nonce", "")),
            _flag(obj.get("listening", False)),
        )
    if kind == "welcome":
        catalog, skipped = _catalog(obj["catalog"])
        return Welcome(
            _version(obj["version"]),
            _name(obj["server"]),
            catalog,
            _unb64(obj.get("proof", "")),
            _name(obj.get("identity", "")),
            skipped,
            _version(obj.get("stream_header", HEADER_VERSION)),
            _flag(obj.get("dialed", False)),
        )
    if kind == "challenge":
        named = obj.get("token_name")
        return Challenge(
            _unb64(obj["nonce"]),
            _version(obj.get("version", 1)),
            None if named is None else _name(named),
        )
    if kind == "auth":
        return Auth(_unb64(obj["proof"]))
    if kind == "catalog":
        return CatalogChanged(
            *_catalog(obj["catalog"]), _version(obj.get("stream_header", HEADER_VERSION))
        )
    if kind in ("refusal", "going_away"):
        cls = Refusal if kind == "refusal" else GoingAway
        return cls(_reason(obj["reason"]), _str(obj.get("text", "")))
    raise ValueError(f"unknown message type {quoted(str(kind))}")


def _catalog(items: Any) -> tuple[tuple[ServiceInfo, ...], int]:
    """The usable entries of a catalog, and how many were skipped (see MAX_CATALOG)."""
    if not isinstance(items, list):
        raise TypeError("catalog is not a list")
    out = [info for item in items[:MAX_CATALOG] if (info := _service(item)) is not None]
    return tuple(out), len(items) - len(out)


def _service(item: Any) -> ServiceInfo | None:
    if not isinstance(item, dict):
        return None
    alias, port = item.get("alias"), item.get("port")
    if alias is not None and not (isinstance(alias, str) and _ALIAS.fullmatch(alias)):
        return None
    transport = item.get("transport", "tcp")
    if transport not in TRANSPORTS:  # a later kind of service: not one this client can expose
        return None
    if port is None and alias is not None and "port" in item:  # null, not left out
        # Only a unix socket goes without a port, and a unix socket is a byte stream.
        return ServiceInfo(alias, None) if transport == "tcp" else None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    return ServiceInfo(alias, port, transport)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        # The type, not the value: the value is the peer's, and may be a megabyte long.
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _version(value: Any) -> int:
    version = _int(value)
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"protocol version out of range (0..{MAX_VERSION})")
    return version


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _name(value: Any) -> str:
    name = _str(value)
    if len(name) > MAX_NAME:
        raise ValueError(f"a name of {len(name)} characters (at most {MAX_NAME})")
    return name


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any) -> bytes:
    return base64.b64decode(_str(value), validate=True)  # binascii.Error is a ValueError


_REASONS = {int(reason): reason for reason in Reason}


def _reason(value: Any) -> Reason:
    # A dict lookup, not Reason(value): an enum call costs a microsecond, once per stream.
    return _REASONS.get(_int(value), Reason.INTERNAL_ERROR)


def negotiate_version(offered: tuple[int, ...]) -> int | None:
    """The highest version both ends speak, or None."""
    common = set(offered) & set(SUPPORTED_VERSIONS)
    return max(common) if common else None


# ------------------------------------------------------------------ data streams


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """client -> server, the first bytes of a data stream: which service to reach, and (in a
    version 2 header) where the consumer's connection came from."""

    service: str  # an alias ("redis"), a port ("6379") or both ("redis:6379")
    origin: Origin | None = None  # set: encoded as a version 2 header with the extension

    def encode(self) -> bytes:
        name = self.service.encode()
        if not 0 < len(name) < 256:
            raise ValueError("service reference must be 1..255 bytes")
        if self.origin is None:
            return bytes((HEADER_VERSION, len(name))) + name
        value = encode_origin(self.origin)
        extensions = bytes((EXTENSION_ORIGIN, len(value))) + value
        return (
            bytes((EXTENDED_HEADER_VERSION, len(name)))
            + name
            + _U16.pack(len(extensions))
            + extensions
        )


@dataclass(frozen=True, slots=True)
class StreamAnswer:
    """server -> client, the first bytes on a data stream: connected, or why not."""

    reason: Reason
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK

    def encode(self) -> bytes:
        text = self.text.encode()[:MAX_ANSWER_TEXT]
        return _ANSWER.pack(self.reason, len(text)) + text


CONNECTED = StreamAnswer(Reason.OK).encode()


class StreamHeaderParser:
    """Reads a :class:`StreamHeader` (version 1, or 2 with extensions) off a stream's front."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes | bytearray) -> tuple[StreamHeader | None, bytes]:
        """The header once complete, and the bytes after it (consumer data)."""
        buffer = self._buffer + data
        if len(buffer) < 2:
            self._buffer = buffer
            return None, b""
        version, length = buffer[0], buffer[1]
        if version not in (HEADER_VERSION, EXTENDED_HEADER_VERSION):
            raise RemoteProtocolError(f"unsupported stream header version {version}")
        if length == 0:
            raise RemoteProtocolError("empty service name in stream header")
        end = 2 + length
        extensions = b""
        if version == EXTENDED_HEADER_VERSION:
            if len(buffer) < end + _U16.size:
                self._buffer = buffer
                return None, b""
            (size,) = _U16.unpack_from(buffer, end)
            if size > MAX_EXTENSIONS:
                raise RemoteProtocolError(
                    f"stream header extensions of {size} bytes (at most {MAX_EXTENSIONS})"
                )
            extensions_at = end + _U16.size
            end = extensions_at + size
            extensions = buffer[extensions_at:end]
        if len(buffer) < end:
            self._buffer = buffer
            return None, b""
        try:
            service = buffer[2 : 2 + length].decode()
        except UnicodeDecodeError:
            raise RemoteProtocolError("service name in stream header is not UTF-8") from None
        self._buffer = b""
        return StreamHeader(service, _origin_of(extensions)), buffer[end:]


def _origin_of(extensions: bytes) -> Origin | None:
    """The origin among a header's extensions (type:u8 length:u8 value each); extensions of
    other types are skipped, so that later ones can be added without a new version."""
    origin: Origin | None = None
    offset = 0
    while offset < len(extensions):
        if len(extensions) - offset < 2:
            raise RemoteProtocolError("stream header extension cut short")
        kind, length = extensions[offset], extensions[offset + 1]
        value_at = offset + 2
        offset = value_at + length
        if offset > len(extensions):
            raise RemoteProtocolError("stream header extension runs past the extensions' end")
        if kind == EXTENSION_ORIGIN:
            if origin is not None:
                raise RemoteProtocolError("two origins in one stream header")
            origin = decode_origin(extensions[value_at:offset])
    return origin


class StreamAnswerParser:
    """Reads a :class:`StreamAnswer` off the front of a stream."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes | bytearray) -> tuple[StreamAnswer | None, bytes]:
        """The answer once complete, and the bytes after it (backend data)."""
        buffer = self._buffer + data
        if len(buffer) < _ANSWER.size:
            self._buffer = buffer
            return None, b""
        code, length = _ANSWER.unpack_from(buffer)
        if length > MAX_ANSWER_TEXT:
            raise RemoteProtocolError(f"stream answer text of {length} bytes is too long")
        end = _ANSWER.size + length
        if len(buffer) < end:
            self._buffer = buffer
            return None, b""
        text = buffer[_ANSWER.size : end].decode(errors="replace")
        self._buffer = b""
        return StreamAnswer(_reason(code), text), buffer[end:]
