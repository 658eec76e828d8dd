"""Links: which services the server offers, and which of them the client exposes.

Theory of operation. The server keeps a *catalog*: each entry pairs a name the
client can ask for (an alias such as ``redis``, a port such as ``6379``, or both)
with the target address the server dials. The catalog is built from ``--link``
values and from Docker link variables (``REDIS_PORT_6379_TCP=tcp://host:port``).
Only the names cross the wire (``Catalog.describe``); targets stay on the server.

The client keeps an *expose list*: each entry says which service to ask for and
where to listen for it locally. It comes from ``--expose`` values, or from the
same Docker link variables read the way the seed's ambassador read them ("seed"
variables): on the client, ``REDIS_PORT_1234_TCP=tcp://192.168.1.52:6379``
forwards local port 1234 to the service 192.168.1.52 published on port 6379. The
URL's host is the server (reached on the tunnel port); the service is asked for
as ``redis:6379``, then ``6379``, then ``redis``, and the first one the server's
catalog offers is used, since a server may link it by alias, by port or both.

A link's target, and where an expose listens, is an *endpoint*: TCP's ``HOST:PORT``, or a
form with a scheme prefix, ``unix:/run/app.sock`` for a unix socket (``tunnel.settings.unixpath``).
The prefixes are read in one place, ``_SCHEMES``: a new form of endpoint is one more entry
there. A unix link may go without a port (``pg=unix:/run/postgresql/.s.PGSQL.5432``): it is
then announced and reached by its alias alone, which no other entry may share.

A link may name several targets, a *pool* (``redis=10.0.0.5:6379,10.0.0.6:6379``): the server
spreads its streams over them (``server.pool``). A pool's member may also be ``dns:HOST:PORT``,
every address the name resolves to (re-resolved while the server runs), written as a
:class:`AllAddresses`. The same alias linked twice is still a conflict, not a pool: a pool is
written in one place, so that a typo in a second ``--link`` does not quietly add a backend.

A reference to a service is one of ``ALIAS``, ``PORT`` or ``ALIAS:PORT``. A bare
port reaches the entry linked by port alone when there is one, so that every
entry has a name that reaches only it; otherwise a reference matching several
entries is an error that asks for ``ALIAS:PORT``.

Everything here is parsing of text the user gave us: no name is resolved and no
socket is touched (host names are kept as written and resolved at dial time).
Every mistake in such text becomes one ``LinkError`` line that says what was wrong and which
forms are accepted.

A service is TCP unless written with the ``udp:`` prefix (``--link dns=udp:10.0.0.2:53``,
``--expose udp:127.0.0.1:5353=dns``, ``--expose udp:dns``): a UDP service is carried as datagram
flows, and a TCP expose never reaches a UDP service nor the other way round. The prefix is read
by :func:`_split_transport` and nothing else, in front of everything else, endpoint schemes
included: it says how the bytes travel, where a scheme says where they go, and it also prefixes
an expose that names no endpoint at all (``udp:dns``), so it is not an entry of ``_SCHEMES``.
A unix socket is a byte stream here (SOCK_STREAM), so ``udp:`` with ``unix:`` is refused.

Docker writes several variables per linked port. Only ``<ALIAS>_PORT_<N>_TCP`` (and its
``_UDP`` twin, for a UDP port) is read; its ``_ADDR``, ``_PORT``, ``_PROTO`` (and
``_START``/``_END``) siblings repeat the same facts and are ignored rather than used as a
fallback, so there is a single source for each service and nothing to reconcile when they disagree.
``<ALIAS>_PORT`` (the first port again) and ``<ALIAS>_NAME`` are
not services either, and ``<ALIAS>_ENV_*`` variables are the linked container's
own environment, re-exported by Docker, so a link found there is not ours.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from tunnel.errors import ConfigError, Reason
from tunnel.settings.unixpath import UnixPath, unix_path_problem
from tunnel.settings.wording import hostport

__all__ = [
    "DEFAULT_TUNNEL_PORT",
    "Address",
    "AllAddresses",
    "AmbiguousService",
    "Catalog",
    "Endpoint",
    "ExposeSpec",
    "LinkError",
    "Member",
    "SeedLink",
    "Service",
    "Transport",
    "UnknownService",
    "links_from_env",
    "named_links_from_env",
    "named_seed_links_from_env",
    "parse_address",
    "parse_endpoint",
    "parse_expose",
    "parse_link",
    "parse_seed_variable",
    "seed_links_from",
    "seed_links_from_env",
]

#: The port ambassador-server listens on by default, and so the port
#: ambassador-client dials on the remote host unless told otherwise.
DEFAULT_TUNNEL_PORT = 7700


class LinkError(ConfigError):
    """A --link, --expose or link variable that cannot be parsed or combined."""


# The lookup errors are ConfigErrors: the reference comes from the user's --expose
# list (the server only passes the client's reference on). When the server refuses
# a stream for them, the peer hears UNKNOWN_SERVICE either way: the reference does
# not name one service.
class UnknownService(ConfigError):
    """A service reference that names nothing in the catalog."""

    reason = Reason.UNKNOWN_SERVICE


class AmbiguousService(ConfigError):
    """A service reference that names several catalog entries."""

    reason = Reason.UNKNOWN_SERVICE


class _Invalid(Exception):
    """Why some text is malformed; the public parsers add context and raise LinkError."""


_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")
_DIGITS = re.compile(r"[0-9]+")
_ZONE = re.compile(r"[A-Za-z0-9_.-]+")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
# Docker's form only: upper case, alias first. Matching lower case too would
# pick up unrelated variables that merely look similar.
_LINK_VARIABLE = re.compile(r"([A-Z][A-Z0-9_]*)_PORT_([0-9]+)_(TCP|UDP)")
# Kubernetes puts KUBERNETES_PORT_443_TCP in every pod, and our own settings
# (AMBASSADOR_*) are never links, whatever they look like.
_NOT_LINKS = ("KUBERNETES_", "AMBASSADOR_")
_TCP_SCHEME = "tcp://"

#: How a service's bytes travel: a byte stream, or datagrams (see tunnel.protocol.datagrams).
Transport = Literal["tcp", "udp"]
_UDP_PREFIX = "udp:"

_LINK_FORMS = (
    "ALIAS=TARGET, PORT=TARGET or ALIAS:PORT=TARGET, where TARGET is HOST:PORT "
    "(IPv6 as [ADDR]:PORT), udp:HOST:PORT for a UDP service, or unix:/PATH; a pool lists "
    "several TCP targets with commas, dns:HOST:PORT standing for every address of HOST"
)
_DNS_PREFIX = "dns:"
_MAX_MEMBERS = 64  # targets one link may list: bounds the pool's state, metrics and status
_EXPOSE_FORMS = (
    "SERVICE, LOCALPORT=SERVICE, BIND:LOCALPORT=SERVICE or unix:/PATH=SERVICE, where SERVICE "
    "is ALIAS, PORT or ALIAS:PORT, the first three with a udp: prefix for a UDP service "
    "(or NAME_PORT_N_TCP=tcp://HOST:PORT, NAME_PORT_N_UDP=udp://HOST:PORT)"
)
# udp: and unix: together: one line, whichever of --link and --expose it was written in.
_UDP_UNIX = "a unix socket carries TCP services only, so udp: does not go with unix:"
_REF_FORMS = "ALIAS, PORT or ALIAS:PORT"
_MAX_OFFERED = 20
_RESOLVED_KEPT = 256  # names remembered per catalog: a peer cannot make the memo grow forever


def _show(text: str) -> str:
    # repr escapes newlines and other unprintables, which keeps messages on one line.
    return repr(text)


def _check_text(text: str) -> None:
    if text == "":
        raise _Invalid("it is empty")
    if any(char.isspace() for char in text):
        raise _Invalid("it contains whitespace")


def _split_transport(text: str) -> tuple[Transport, str]:
    """``udp:REST`` is a UDP form of REST; anything else is TCP, kept whole."""
    if text[: len(_UDP_PREFIX)].lower() == _UDP_PREFIX:
        return "udp", text[len(_UDP_PREFIX) :]
    return "tcp", text


def _with_transport(transport: Transport, text: str) -> str:
    return f"{_UDP_PREFIX}{text}" if transport == "udp" else text


def _parse_port(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise _Invalid(f"{_show(text)} is not a port number")
    # Checking the length first keeps int() away from absurdly long digit strings.
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        shown = text if len(text) <= 12 else f"{text[:12]}..."
        raise _Invalid(f"port {shown} is outside 1..65535")
    return int(text)


def _port_problem(port: int, listening: bool = False) -> str | None:
    # Port 0 is only meaningful where we listen: the system picks a free port.
    low = 0 if listening else 1
    return None if low <= port <= 65535 else f"port {port} is outside {low}..65535"


def _host_problem(host: str) -> str | None:
    """Why ``host`` is not a usable host (None if it is); IPv6 comes without brackets."""
    if host == "":
        return "the host is missing"
    if ":" in host:
        # ipaddress takes any text as a zone (fe80::1%eth0); keeping zones to
        # interface-name characters keeps '=' and ']' unambiguous in our forms.
        _, percent, zone = host.partition("%")
        try:
            ipaddress.IPv6Address(host)
            if percent and not _ZONE.fullmatch(zone):
                raise ValueError(zone)
        except ValueError:
            return f"{_show(host)} is not a valid IPv6 address"
        return None
    if _DOTTED_NUMBERS.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{_show(host)} is not a valid IPv4 address"
        return None
    if not _HOST_NAME.fullmatch(host):
        return f"{_show(host)} is not a valid host name"
    return None


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port, the host kept as written (a name, IPv4 or bare IPv6)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        problem = _host_problem(self.host) or _port_problem(self.port, listening=True)
        if problem is not None:
            raise ValueError(problem)

    def __str__(self) -> str:
        return hostport(self.host, self.port)


def _split_host_port(text: str) -> tuple[str, str | None]:
    """Split ``host:port``, ``[v6]:port``, ``host`` or ``[v6]``; the port may be absent."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _Invalid("an IPv6 address is missing its closing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if ":" not in host:
            raise _Invalid("brackets are only for IPv6 addresses")
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            raise _Invalid("expected ':PORT' after ']'")
        return host, rest[1:]
    if text.count(":") > 1:
        raise _Invalid("put an IPv6 address in brackets, like [::1]:6379")
    host, colon, port = text.partition(":")
    return host, (port if colon else None)


def _parse_address(
    text: str, default_port: int | None = None, default_host: str | None = None
) -> Address:
    _check_text(text)
    if "://" in text:
        raise _Invalid("expected HOST:PORT, not a URL")
    bracketed = text.startswith("[")
    host, port_text = _split_host_port(text)
    if port_text is not None:
        port = _parse_port(port_text)
    elif not bracketed and _DIGITS.fullmatch(host):
        if default_host is None:
            raise _Invalid("the host is missing")
        host, port = default_host, _parse_port(host)
    elif default_port is not None:
        port = default_port
    else:
        raise _Invalid("the port is missing")
    problem = _host_problem(host)
    if problem is not None:
        raise _Invalid(problem)
    return Address(host, port)


def parse_address(
    text: str, default_port: int | None = None, default_host: str | None = None
) -> Address:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT``.

    With ``default_port`` a bare ``HOST`` is accepted; with ``default_host`` a bare
    ``PORT`` is. Raises LinkError.
    """
    try:
        return _parse_address(text, default_port, default_host)
    except _Invalid as problem:
        forms = ["HOST:PORT", "[IPV6]:PORT"]
        if default_port is not None:
            forms.append("HOST")
        if default_host is not None:
            forms.append("PORT")
        raise LinkError(f"bad address {_show(text)}: {problem}; use {', '.join(forms)}") from None


Endpoint: TypeAlias = Address | UnixPath
"""Where a link leads or an expose listens: a TCP address or a unix socket's path."""


def _parse_unix(text: str) -> UnixPath:
    # unix:///run/app.sock is how Docker and others write it (a URL with no host).
    path = text[2:] if text.startswith("///") else text
    problem = unix_path_problem(path)
    if problem is not None:
        raise _Invalid(problem)
    return UnixPath(path)


# The endpoint forms written with a scheme prefix, by scheme (lower case): text without one of
# these prefixes is TCP's HOST:PORT. Another form of endpoint is one more entry here (and a
# type in Endpoint); "unix" is thus never read as a host name before a port.
_SCHEMES: dict[str, Callable[[str], Endpoint]] = {"unix": _parse_unix}


def _split_scheme(text: str) -> tuple[str | None, str]:
    """(scheme, rest) when ``text`` starts with a known ``scheme:``; (None, text) otherwise."""
    scheme, colon, rest = text.partition(":")
    if colon and scheme.lower() in _SCHEMES:
        return scheme.lower(), rest
    return None, text


def _parse_endpoint(
    text: str, default_port: int | None = None, default_host: str | None = None
) -> Endpoint:
    _check_text(text)
    scheme, rest = _split_scheme(text)
    if scheme is None:
        return _parse_address(text, default_port, default_host)
    return _SCHEMES[scheme](rest)


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``HOST:PORT``, ``[IPV6]:PORT`` or ``unix:/PATH``; raises LinkError."""
    try:
        return _parse_endpoint(text)
    except _Invalid as problem:
        raise LinkError(
            f"bad endpoint {_show(text)}: {problem}; use HOST:PORT, [IPV6]:PORT or unix:/PATH"
        ) from None


@dataclass(frozen=True, slots=True)
class AllAddresses:
    """A pool member written ``dns:HOST:PORT``: every address ``HOST`` resolves to, each a
    target of its own, the name resolved again while the server runs."""

    address: Address

    def __str__(self) -> str:
        return f"{_DNS_PREFIX}{self.address}"


Member: TypeAlias = Endpoint | AllAddresses
"""One target a link lists: an endpoint, or every address of a host name."""


def _parse_member(text: str) -> Member:
    if text[: len(_DNS_PREFIX)].lower() == _DNS_PREFIX:
        return AllAddresses(_parse_address(text[len(_DNS_PREFIX) :]))
    return _parse_endpoint(text)


def _parse_members(text: str, transport: Transport) -> tuple[Member, ...]:
    """The targets of one link, in the order given: one, or a comma-separated pool."""
    parts = text.split(",")
    if len(parts) > _MAX_MEMBERS:
        raise _Invalid(f"a pool lists at most {_MAX_MEMBERS} targets, not {len(parts)}")
    if "" in parts:
        raise _Invalid("the list of targets has an empty entry (two commas, or one at an end)")
    members = tuple(_parse_member(part) for part in parts)
    if transport != "tcp" and (len(members) > 1 or isinstance(members[0], AllAddresses)):
        raise _Invalid("a UDP service takes one target: pools are for TCP and unix targets")
    seen: set[Member] = set()
    for member in members:
        if member in seen:
            raise _Invalid(f"{member} is listed twice; list each target once")
        seen.add(member)
    return members


def _parse_ref(text: str) -> tuple[str | None, int | None]:
    """Split a service reference into (alias, port); either may be absent, not both."""
    _check_text(text)
    if _DIGITS.fullmatch(text):
        return None, _parse_port(text)
    alias, colon, port_text = text.partition(":")
    if not _ALIAS.fullmatch(alias):
        raise _Invalid(
            f"{_show(alias)} is not an alias (a letter, then letters, digits, '-' or '_', "
            "at most 63)"
        )
    return alias.lower(), (_parse_port(port_text) if colon else None)


# The identity of an offering host that dialed a --listen client, in HOST/SERVICE: a
# certificate's or a token's name, as the identities of access rules are written.
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def _canonical_ref(text: str) -> str:
    host, slash, rest = text.rpartition("/")
    if slash:
        if not _HOST.fullmatch(host):
            raise _Invalid(
                f"{_show(host)} is not a host name (letters, digits, '.', '-', '_' or '@', "
                "at most 64): write HOST/SERVICE"
            )
        return f"{host}/{_canonical_ref(rest)}"
    alias, port = _parse_ref(text)
    if alias is None:
        return str(port)
    return alias if port is None else f"{alias}:{port}"


@dataclass(frozen=True, slots=True)
class Service:
    """One catalog entry: what the client may ask for and where the server dials.

    ``alias`` is lower case, or None for an entry linked by port alone. ``port`` is
    the port announced to clients, usually but not necessarily ``target.port``; None for a
    unix socket linked by alias alone, which has no port to announce. ``transport`` says
    whether clients reach it as a byte stream or as datagram flows (a unix target: a stream).
    ``pool`` lists every target of a link that names several (or a ``dns:`` one), ``target``
    first among them; empty for a link of one target, the usual case, which is dialed as is.
    """

    alias: str | None
    port: int | None
    target: Endpoint
    transport: Transport = "tcp"
    pool: tuple[Member, ...] = ()

    def __post_init__(self) -> None:
        if self.alias is not None and not (
            _ALIAS.fullmatch(self.alias) and self.alias == self.alias.lower()
        ):
            raise ValueError(f"{_show(self.alias)} is not a lower-case alias")
        if self.transport != "tcp" and isinstance(self.target, UnixPath):
            raise ValueError(_UDP_UNIX)
        if self.port is None:
            if self.alias is None:
                raise ValueError("an entry without a port needs an alias")
            return
        problem = _port_problem(self.port)
        if problem is not None:
            raise ValueError(problem)

    @property
    def members(self) -> tuple[Member, ...]:
        """Every target the link lists, in its order."""
        return self.pool or (self.target,)

    @property
    def name(self) -> str:
        """How the entry is usually called: its alias, or its port when it has none."""
        return self.alias if self.alias is not None else str(self.port)

    @property
    def full_name(self) -> str:
        """A reference that reaches this entry alone (``alias:port``, the port, or the alias
        of an entry without a port)."""
        if self.alias is None:
            return str(self.port)
        return self.alias if self.port is None else f"{self.alias}:{self.port}"

    def matches(self, ref: str) -> bool:
        """Whether ``ref`` (ALIAS, PORT or ALIAS:PORT, any case) names this entry."""
        try:
            alias, port = _parse_ref(ref)
        except _Invalid:
            return False
        return self._matches(alias, port)

    def _matches(self, alias: str | None, port: int | None) -> bool:
        return (alias is None or alias == self.alias) and (port is None or port == self.port)

    def to_text(self) -> str:
        """The ``--link`` value that parses back to this entry."""
        target = _with_transport(self.transport, ",".join(str(m) for m in self.members))
        if self.alias is None:
            return f"{self.port}={target}"
        own_port = self.target.port if isinstance(self.target, Address) else None
        if self.port is None or self.port == own_port:
            return f"{self.alias}={target}"
        return f"{self.alias}:{self.port}={target}"

    def __str__(self) -> str:
        return self.to_text()


def _unique(services: Iterable[Service]) -> tuple[Service, ...]:
    """Drop exact repeats; refuse two targets for the same (alias, port)."""
    seen: dict[tuple[str | None, int | None, Transport], Service] = {}
    for service in services:
        # A TCP and a UDP service may share a name (DNS listens on both): a stream's header
        # says which one it wants.
        key = (service.alias, service.port, service.transport)
        earlier = seen.setdefault(key, service)
        if earlier.members != service.members:
            raise LinkError(
                f"conflicting links {earlier.to_text()} and {service.to_text()}: "
                f"{service.full_name} is linked once; keep one of them, or pool the targets "
                "in one link (ALIAS=HOST:PORT,HOST:PORT)"
            )
    # An entry without a port is reached by its alias alone, so nothing else of its transport
    # may have it (a UDP entry is told apart by the stream's header, as above).
    for alias, port, transport in seen:
        if port is None:
            shared = [
                s
                for (a, p, t), s in seen.items()
                if a == alias and p is not None and t == transport
            ]
            if shared:
                lone = seen[(alias, None, transport)]
                raise LinkError(
                    f"links {lone.to_text()} and {shared[0].to_text()} share the alias "
                    f"{alias!r}, and the first has no port to tell them apart; give it one, "
                    f"like {alias}:PORT={lone.target}, or another alias"
                )
    return tuple(seen.values())


@dataclass(frozen=True, slots=True)
class Catalog:
    """The services a server offers, in the order first given, without repeats."""

    entries: tuple[Service, ...] = ()
    # What resolve() found for a name, so a busy service's streams skip the parsing.
    _resolved: dict[tuple[str, Transport], Service] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        # Normalising here means every Catalog, however built, is free of repeats.
        object.__setattr__(self, "entries", _unique(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Service]:
        return iter(self.entries)

    def merge(self, *others: Iterable[Service]) -> Catalog:
        """This catalog followed by more entries (LinkError on a conflict)."""
        services = list(self.entries)
        for other in others:
            services.extend(other)
        return Catalog(tuple(services))

    def describe(self) -> list[dict[str, str | int | None]]:
        """What the server announces: names only, never where they lead. A UDP entry says so
        (``transport``); an entry without the field is TCP, as older servers announce it."""
        described: list[dict[str, str | int | None]] = []
        for service in self.entries:
            entry: dict[str, str | int | None] = {"alias": service.alias, "port": service.port}
            if service.transport != "tcp":
                entry["transport"] = service.transport
            described.append(entry)
        return described

    def resolve(self, ref: str, transport: Transport = "tcp") -> Service:
        """The one entry of ``transport`` that ``ref`` names; UnknownService or
        AmbiguousService otherwise."""
        key = (ref, transport)
        found = self._resolved.get(key)
        if found is None:
            found = self._resolve(ref, transport)
            if len(self._resolved) < _RESOLVED_KEPT:
                self._resolved[key] = found
        return found

    def _resolve(self, ref: str, transport: Transport = "tcp") -> Service:
        try:
            alias, port = _parse_ref(ref)
        except _Invalid as problem:
            raise UnknownService(
                f"no service {_show(ref)}: {problem}; name it as {_REF_FORMS} ({self._offer()})"
            ) from None
        named = [service for service in self.entries if service._matches(alias, port)]
        found = [service for service in named if service.transport == transport]
        if named and not found:
            other = named[0].transport
            raise UnknownService(
                f"service {_show(ref)} is a {other.upper()} service, not {transport.upper()}; "
                f"expose it as {_with_transport(other, 'PORT')}={ref}"
            )
        if alias is None:
            # A bare port is the whole name of an entry linked by port alone;
            # preferring it gives that entry a name nothing else shares.
            found = [service for service in found if service.alias is None] or found
        if not found:
            raise UnknownService(f"no service {_show(ref)}; {self._offer()}")
        if len(found) > 1:
            names = ", ".join(service.full_name for service in found)
            raise AmbiguousService(
                f"service {_show(ref)} could be any of {names}; "
                f"name it as alias:port, e.g. {found[0].full_name}"
            )
        return found[0]

    def _offer(self) -> str:
        if not self.entries:
            return "no services are linked"
        names = [service.full_name for service in self.entries]
        more = len(names) - _MAX_OFFERED
        listed = ", ".join(names[:_MAX_OFFERED]) + (f" and {more} more" if more > 0 else "")
        return f"offered: {listed}"


def parse_link(text: str) -> Service:
    """Parse a ``--link`` value into a catalog entry; raises LinkError."""
    try:
        _check_text(text)
        name, equals, target_text = text.partition("=")
        if not equals:
            raise _Invalid("'=' is missing")
        if name == "":
            raise _Invalid("the alias or port before '=' is missing")
        transport, target_text = _split_transport(target_text)
        if target_text == "":
            # A UDP service's target can only be HOST:PORT: name what is missing exactly.
            missing = "the HOST:PORT after 'udp:'" if transport == "udp" else "the target after '='"
            raise _Invalid(f"{missing} is missing")
        if transport != "tcp" and _split_scheme(target_text)[0] == "unix":
            raise _Invalid(_UDP_UNIX)
        alias, port = _parse_ref(name)
        members = _parse_members(target_text, transport)
    except _Invalid as problem:
        raise LinkError(f"bad link {_show(text)}: {problem}; use {_LINK_FORMS}") from None
    first = members[0]
    # A dns: member is dialed by its name until the server has resolved it.
    target = first.address if isinstance(first, AllAddresses) else first
    if port is None:
        port = next((m.port for m in members if isinstance(m, Address)), None)
        if port is None and isinstance(target, Address):
            port = target.port
    pool = members if len(members) > 1 or isinstance(first, AllAddresses) else ()
    return Service(alias, port, target, transport, pool)


def _imported_by_docker(alias: str, environ: Mapping[str, str]) -> bool:
    """Whether ``<X>_ENV_...`` is linked container X's environment, re-exported by Docker."""
    start = alias.find("_ENV_")
    while start >= 0:
        if f"{alias[:start]}_NAME" in environ:
            return True
        start = alias.find("_ENV_", start + 1)
    return False


def _link_variables(environ: Mapping[str, str]) -> Iterator[tuple[str, str, int, Transport]]:
    """Yield (variable name, alias, port, transport) for each Docker link variable of ours."""
    for name in sorted(environ):
        if name.startswith(_NOT_LINKS):
            continue
        match = _LINK_VARIABLE.fullmatch(name)
        if match is None or _imported_by_docker(match[1], environ):
            continue
        yield name, *_link_name_parts(name)


def _link_name_parts(name: str) -> tuple[str, int, Transport]:
    """(alias, port, transport) from a variable name ``<ALIAS>_PORT_<N>_TCP`` (or ``_UDP``)."""
    match = _LINK_VARIABLE.fullmatch(name)
    try:
        if match is None:
            raise _Invalid("the name is not of the form ALIAS_PORT_N_TCP or ALIAS_PORT_N_UDP")
        if len(match[1]) > 63:
            raise _Invalid("the alias is longer than 63 characters")
        transport: Transport = "udp" if match[3] == "UDP" else "tcp"
        return match[1].lower(), _parse_port(match[2]), transport
    except _Invalid as problem:
        raise LinkError(f"bad link variable {name}: {problem}") from None


def _parse_url(name: str, value: str, transport: Transport = "tcp") -> Address:
    """The address of a link variable's URL, whose scheme is the variable's transport."""
    scheme = f"{transport}://"
    try:
        _check_text(value)
        if not value.lower().startswith(scheme):
            if _split_scheme(value)[0] == "unix":
                raise _Invalid(
                    f"it is not a {scheme} URL (a link variable names a port; link a unix "
                    "socket with --link ALIAS=unix:/PATH instead)"
                )
            raise _Invalid(f"it is not a {scheme} URL")
        return _parse_address(value[len(scheme) :])
    except _Invalid as problem:
        raise LinkError(
            f"bad link variable {name}={_show(value)}: {problem}; "
            f"Docker writes it as {scheme}HOST:PORT"
        ) from None


def links_from_env(environ: Mapping[str, str]) -> Catalog:
    """The catalog described by Docker link variables (``REDIS_PORT_6379_TCP=...``)."""
    return Catalog(tuple(service for _, service in named_links_from_env(environ)))


def named_links_from_env(environ: Mapping[str, str]) -> list[tuple[str, Service]]:
    """Each Docker link variable's name with the catalog entry it describes (repeats kept)."""
    return [
        (name, Service(alias, port, _parse_url(name, environ[name], transport), transport))
        for name, alias, port, transport in _link_variables(environ)
    ]


def named_seed_links_from_env(environ: Mapping[str, str]) -> list[tuple[str, SeedLink]]:
    """Each Docker link variable's name with what it asks the client to expose."""
    return [
        (name, parse_seed_variable(name, environ[name])) for name, *_ in _link_variables(environ)
    ]


@dataclass(frozen=True, slots=True)
class ExposeSpec:
    """One service the client listens for locally.

    ``bind`` None means the ``--bind`` default; ``port`` None means the service's
    own port from the catalog; ``socket`` set means a unix socket at that path instead of
    a port (``bind`` and ``port`` are then None). ``service`` is a reference (ALIAS, PORT or
    ALIAS:PORT), kept in canonical form; a bare-port service with no local port
    listens on that same port.
    """

    bind: str | None
    port: int | None
    service: str
    # References to try, in order, when the server does not offer ``service``: the seed's
    # form names a service that the server may have linked by alias, by port or both.
    alternatives: tuple[str, ...] = ()
    transport: Transport = "tcp"  # udp: a UDP socket, each source address a datagram flow
    socket: UnixPath | None = None

    def __post_init__(self) -> None:
        try:
            service = _canonical_ref(self.service)
            alternatives = tuple(_canonical_ref(ref) for ref in self.alternatives)
        except _Invalid as invalid:
            raise ValueError(str(invalid)) from None
        object.__setattr__(self, "service", service)
        object.__setattr__(self, "alternatives", alternatives)
        if self.socket is not None:
            if self.bind is not None or self.port is not None or alternatives:
                raise ValueError("a unix socket takes neither a bind address nor a port")
            if self.transport != "tcp":
                raise ValueError(_UDP_UNIX)
            return
        if alternatives and self.port is None:
            raise ValueError("a service with alternatives needs a local port")
        if self.port is None and _DIGITS.fullmatch(service):
            object.__setattr__(self, "port", int(service))
        if self.port is None:
            if self.bind is not None:
                raise ValueError("a bind address needs a local port")
            return
        problem = _port_problem(self.port, listening=True)
        if problem is None and self.bind is not None:
            problem = _host_problem(self.bind)
        if problem is not None:
            raise ValueError(problem)

    @property
    def refs(self) -> tuple[str, ...]:
        """Every reference to ask the catalog for, preferred first."""
        return (self.service, *self.alternatives)

    def to_text(self) -> str:
        """The ``--expose`` value that parses back to this entry (its first reference only,
        when it has alternatives: those come from a link variable, which names a host)."""
        if self.socket is not None:
            text = f"{self.socket}={self.service}"
        elif self.port is None or (self.service == str(self.port) and self.bind is None):
            text = self.service
        elif self.bind is not None:
            text = f"{Address(self.bind, self.port)}={self.service}"
        else:
            text = f"{self.port}={self.service}"
        return _with_transport(self.transport, text)

    def __str__(self) -> str:
        return self.to_text()


@dataclass(frozen=True, slots=True)
class SeedLink:
    """A Docker link variable read on the client: the server's host, and what to expose.

    The URL's port is the port at which that host published the service (where the
    seed's remote ambassador listened); the tunnel itself is reached on the tunnel port.
    """

    remote_host: str
    expose: ExposeSpec


def parse_seed_variable(name: str, value: str) -> SeedLink:
    """Read ``REDIS_PORT_1234_TCP=tcp://192.168.1.52:6379`` as the seed did: "forward local
    port 1234 to the service 192.168.1.52 published on 6379", asking the server for
    ``redis:6379``, then ``6379``, then ``redis``. Raises LinkError naming the variable."""
    alias, local_port, transport = _link_name_parts(name)
    remote = _parse_url(name, value, transport)
    published = remote.port
    refs = (str(published), alias)
    spec = ExposeSpec(None, local_port, f"{alias}:{published}", refs, transport)
    return SeedLink(remote.host, spec)


def _parse_local(text: str) -> tuple[str | None, int]:
    """Where to listen: ``PORT`` (on the --bind default) or ``BIND:PORT``."""
    if _DIGITS.fullmatch(text):
        return None, _parse_port(text)
    try:
        address = _parse_address(text)
    except _Invalid as problem:
        raise _Invalid(f"local side {_show(text)}: {problem}") from None
    return address.host, address.port


def _parse_expose(text: str) -> ExposeSpec | SeedLink:
    try:
        _check_text(text)
        transport, rest = _split_transport(text)
        if transport != "tcp":
            if _split_scheme(rest)[0] == "unix":
                raise _Invalid(_UDP_UNIX)
            parsed = _parse_expose_form(rest)
            if isinstance(parsed, SeedLink):
                raise _Invalid("a link variable says its transport in its name (_UDP)")
            return replace(parsed, transport=transport)
        return _parse_expose_form(text)
    except _Invalid as problem:
        raise LinkError(f"bad expose {_show(text)}: {problem}; use {_EXPOSE_FORMS}") from None


def _parse_expose_form(text: str) -> ExposeSpec | SeedLink:
    """An expose value without its transport prefix; raises _Invalid."""
    _check_text(text)
    local, equals, service = text.partition("=")
    scheme, _ = _split_scheme(local)
    if not equals:
        if scheme is not None:
            raise _Invalid("the service after '=' is missing")
        return ExposeSpec(None, None, _canonical_ref(text))
    if scheme is not None:
        if service == "":
            raise _Invalid("the service after '=' is missing")
        where = _parse_endpoint(local)
        if not isinstance(where, UnixPath):  # pragma: no cover - every scheme is unix today
            raise _Invalid(f"cannot listen on {where}")
        return ExposeSpec(None, None, _canonical_ref(service), socket=where)
    if "://" in service or _LINK_VARIABLE.fullmatch(local):
        if not _LINK_VARIABLE.fullmatch(local):
            raise _Invalid("a URL belongs after a variable name such as REDIS_PORT_6379_TCP")
        return parse_seed_variable(local, service)
    if local == "" or service == "":
        raise _Invalid("both sides of '=' are needed")
    bind, port = _parse_local(local)
    return ExposeSpec(bind, port, _canonical_ref(service))


def parse_expose(text: str) -> ExposeSpec:
    """Parse an ``--expose`` value (a Docker link variable too); raises LinkError."""
    parsed = _parse_expose(text)
    return parsed.expose if isinstance(parsed, SeedLink) else parsed


def _one_host(
    hosts: list[tuple[str, str]], specs: Iterable[ExposeSpec]
) -> tuple[str | None, list[ExposeSpec]]:
    """The single remote host among (host, where it came from), and the specs without repeats."""
    distinct: dict[str, str] = {}
    for host, source in hosts:
        # Host names are case-insensitive; the first spelling seen is the one kept.
        distinct.setdefault(host.lower(), f"{host} ({source})")
    if len(distinct) > 1:
        raise LinkError(
            f"link variables point at different hosts: {', '.join(distinct.values())}; "
            "a client tunnels to one server, so keep the variables for one host"
        )
    return (hosts[0][0] if hosts else None), _one_per_local_port(specs)


def _one_per_local_port(specs: Iterable[ExposeSpec]) -> list[ExposeSpec]:
    """The specs without repeats, and one link variable per local port.

    Docker writes one variable per alias, so a container linked under two aliases gives
    two variables for one local port: they are one listener when they name the same
    published port (the first alias is asked for first), and an error when they do not.
    """
    kept: dict[ExposeSpec, None] = {}
    seeds: dict[tuple[str | None, int | None, Transport], ExposeSpec] = {}
    for spec in specs:
        if spec.alternatives:
            # A TCP and a UDP port of one number are two listeners (DNS_PORT_53_TCP and _UDP).
            earlier = seeds.setdefault((spec.bind, spec.port, spec.transport), spec)
            if earlier is not spec:
                if earlier.alternatives[0] != spec.alternatives[0]:
                    raise LinkError(
                        f"two link variables want local port {spec.port}, one for "
                        f"{earlier.service} and one for {spec.service}; keep one of them"
                    )
                continue
        kept.setdefault(spec, None)
    return list(kept)


def seed_links_from(texts: Iterable[str]) -> tuple[str | None, list[ExposeSpec]]:
    """Parse ``--expose`` values; the remote host is the one their seed forms name.

    The host is None when no value is a link variable. Raises LinkError, also when
    link variables name different hosts.
    """
    hosts: list[tuple[str, str]] = []
    specs: list[ExposeSpec] = []
    for text in texts:
        parsed = _parse_expose(text)
        if isinstance(parsed, SeedLink):
            hosts.append((parsed.remote_host, text.partition("=")[0]))
            parsed = parsed.expose
        specs.append(parsed)
    return _one_host(hosts, specs)


def seed_links_from_env(environ: Mapping[str, str]) -> tuple[str | None, list[ExposeSpec]]:
    """The remote host and expose list given by Docker link variables on the client.

    The host is None when there are no link variables. Raises LinkError, also when
    they name different hosts.
    """
    seeds = named_seed_links_from_env(environ)
    hosts = [(seed.remote_host, name) for name, seed in seeds]
    return _one_host(hosts, (seed.expose for _, seed in seeds))
