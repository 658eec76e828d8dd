"""Where a consumer's connection came from, and how a stream header carries it.

The client knows the consumer's real addresses (the source it connected from, the local address
it connected to); the server, which dials the backend, does not. A backend that wants them
(``--proxy-protocol``, :mod:`tunnel.protocol.proxyheader`) gets them from the stream header's
*origin* extension (``docs/protocol.md``, "Stream header extensions"), which this module encodes
and decodes.

An :class:`Origin` is a pair of endpoints of one family: IPv4 or IPv6 (address and port each),
a unix socket (a path each, either may be empty: an accepted unix connection's peer usually has
none), or unspecified (the client could not say). Everything decoded here came from a peer: every
length is checked before anything is copied, and the addresses are parsed, never kept as text.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from tunnel.errors import RemoteProtocolError

# A unix socket path is at most 108 bytes on Linux (sun_path); 108 is also what PROXY v2's
# AF_UNIX block holds, so every origin we accept can be passed on unchanged.
MAX_UNIX_PATH = 108

_INET = struct.Struct(">4s4sHH")
_INET6 = struct.Struct(">16s16sHH")


class Family(enum.IntEnum):
    """An origin's address family, as the extension writes it."""

    UNSPEC = 0  # the client could not tell (a socket of another kind)
    UNIX = 1
    INET = 4
    INET6 = 6


@dataclass(frozen=True, slots=True)
class Origin:
    """The consumer's connection as its own end saw it: source and destination.

    For IPv4 and IPv6 the addresses are in their canonical text form and the ports 0..65535;
    for unix sockets the addresses are paths (ports 0); for UNSPEC all are empty.
    """

    family: Family
    source: str = ""
    destination: str = ""
    source_port: int = 0
    destination_port: int = 0

    def __post_init__(self) -> None:
        if self.family in (Family.INET, Family.INET6):
            kind = ipaddress.IPv4Address if self.family is Family.INET else ipaddress.IPv6Address
            for text in (self.source, self.destination):
                kind(text)  # ValueError for anything else
            for port in (self.source_port, self.destination_port):
                if not 0 <= port <= 0xFFFF:
                    raise ValueError(f"port {port} is outside 0..65535")
        elif self.family is Family.UNIX:
            for path in (self.source, self.destination):
                if len(path.encode()) > MAX_UNIX_PATH:
                    raise ValueError(f"a unix socket path longer than {MAX_UNIX_PATH} bytes")

    def __str__(self) -> str:
        if self.family is Family.INET:
            return f"{self.source}:{self.source_port}"
        if self.family is Family.INET6:
            return f"[{self.source}]:{self.source_port}"
        if self.family is Family.UNIX:
            return f"unix:{self.source}" if self.source else "unix:(unnamed)"
        return "unknown"


UNSPECIFIED = Origin(Family.UNSPEC)


def origin_of(family: str, peername: object, sockname: object) -> Origin:
    """The origin of an accepted connection from what the socket says of itself.

    ``family`` is ``"inet"``, ``"inet6"`` or ``"unix"`` (the caller maps its socket's family);
    ``peername`` and ``sockname`` are as the socket gives them. Anything unexpected is
    UNSPEC rather than an error: the origin is a courtesy to the backend, never a reason to
    drop a consumer.
    """
    try:
        if (
            family in ("inet", "inet6")
            and isinstance(peername, tuple)
            and isinstance(sockname, tuple)
        ):
            source = ipaddress.ip_address(str(peername[0]).partition("%")[0])
            destination = ipaddress.ip_address(str(sockname[0]).partition("%")[0])
            # An IPv4 consumer of a dual-stack listener: say IPv4, as the consumer did.
            if (
                isinstance(source, ipaddress.IPv6Address)
                and isinstance(destination, ipaddress.IPv6Address)
                and source.ipv4_mapped is not None
                and destination.ipv4_mapped is not None
            ):
                source, destination = source.ipv4_mapped, destination.ipv4_mapped
            if source.version != destination.version:
                return UNSPECIFIED
            kind = Family.INET if source.version == 4 else Family.INET6
            return Origin(kind, str(source), str(destination), int(peername[1]), int(sockname[1]))
        if family == "unix":
            return Origin(Family.UNIX, _path(peername), _path(sockname))
    except (ValueError, IndexError, TypeError):
        pass
    return UNSPECIFIED


def _path(name: object) -> str:
    if isinstance(name, bytes):  # an abstract socket's name
        return name.decode(errors="replace")
    return str(name or "")


def encode_origin(origin: Origin) -> bytes:
    """The origin extension's value: ``family:u8`` and the family's addresses."""
    family = origin.family
    if family is Family.INET or family is Family.INET6:
        layout = _INET if family is Family.INET else _INET6
        source = ipaddress.ip_address(origin.source).packed
        destination = ipaddress.ip_address(origin.destination).packed
        return bytes((family,)) + layout.pack(
            source, destination, origin.source_port, origin.destination_port
        )
    if family is Family.UNIX:
        source_path, destination_path = origin.source.encode(), origin.destination.encode()
        return (
            bytes((family, len(source_path)))
            + source_path
            + bytes((len(destination_path),))
            + destination_path
        )
    return bytes((Family.UNSPEC,))


def decode_origin(value: bytes) -> Origin:
    """Read an origin extension's value; RemoteProtocolError, naming what is wrong, else."""
    if not value:
        raise RemoteProtocolError("empty origin in stream header")
    family, body = value[0], value[1:]
    if family in (Family.INET, Family.INET6):
        layout = _INET if family == Family.INET else _INET6
        if len(body) != layout.size:
            raise RemoteProtocolError(
                f"origin of family {family} is {len(body)} bytes, not {layout.size}"
            )
        source, destination, source_port, destination_port = layout.unpack(body)
        return Origin(
            Family(family),
            str(ipaddress.ip_address(source)),
            str(ipaddress.ip_address(destination)),
            source_port,
            destination_port,
        )
    if family == Family.UNIX:
        source_path, rest = _counted(body)
        destination_path, rest = _counted(rest)
        if rest:
            raise RemoteProtocolError(f"{len(rest)} bytes after a unix origin")
        return Origin(Family.UNIX, source_path, destination_path)
    if family == Family.UNSPEC:
        if body:
            raise RemoteProtocolError("an unspecified origin carries no addresses")
        return UNSPECIFIED
    raise RemoteProtocolError(f"unknown origin family {family}")


def _counted(data: bytes) -> tuple[str, bytes]:
    """A ``length:u8`` path off the front of ``data``, and what follows it."""
    if not data:
        raise RemoteProtocolError("a unix origin is cut short")
    length = data[0]
    if length > MAX_UNIX_PATH:
        raise RemoteProtocolError(f"a unix origin path of {length} bytes (at most {MAX_UNIX_PATH})")
    if len(data) < 1 + length:
        raise RemoteProtocolError("a unix origin is cut short")
    try:
        path = data[1 : 1 + length].decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("a unix origin path is not UTF-8") from None
    return path, data[1 + length :]
