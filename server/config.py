"""What an ambassador-server runs with, built by the CLI from flags, environment and file."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from server.admission import STREAMS_PER_IDENTITY, AdmissionLimits
from tunnel.protocol.limits import Limits
from tunnel.security.access import AccessRules
from tunnel.security.allowlist import LOOPBACK, Allowlist
from tunnel.security.auth import load_tokens
from tunnel.security.binding import UNBOUND
from tunnel.security.tls import ClientTls, ServerTls, bound_server_context, client_context
from tunnel.settings.links import DEFAULT_TUNNEL_PORT, Address, Catalog, Service
from tunnel.settings.pooling import PoolSettings


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: Address = field(default_factory=lambda: Address("0.0.0.0", DEFAULT_TUNNEL_PORT))
    catalog: Catalog = field(default_factory=Catalog)
    limits: Limits = field(default_factory=Limits)
    name: str = "ambassador-server"
    dial_timeout: float = 5.0  # seconds to reach a backend before the stream is refused
    handshake_timeout: float = 10.0  # a connection that sends no hello by then is closed
    max_pending_dials: int = 256  # dials in progress per session; more wait (up to dial_timeout)
    tls: ServerTls | None = None  # None: plaintext
    access: AccessRules = field(default_factory=AccessRules)  # empty: everyone reaches all
    token_file: str | None = None  # NAME:SECRET lines; set: clients must prove a token
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    max_streams_per_identity: int = STREAMS_PER_IDENTITY  # backend streams, all its sessions
    allow_from: Allowlist = field(default_factory=Allowlist)  # empty: every address may try
    # Read a PROXY protocol header (from a load balancer) before each tunnel connection.
    accept_proxy_protocol: bool = False
    # Take the tunnel inside a WebSocket upgraded at this path (behind an HTTP ingress); None:
    # the tunnel starts with the first byte, as without an ingress.
    websocket_path: str | None = None
    # SO_REUSEPORT on the tunnel listener: an upgraded process may bind beside this one.
    reuse_port: bool = False
    # Who may send that header (the balancers); a header from anyone else closes the connection.
    accept_proxy_from: Allowlist = LOOPBACK
    # Links whose backend gets a PROXY protocol header first, and its version (1 or 2).
    proxy_protocol: Mapping[Service, int] = field(default_factory=dict)
    # --connect: dial these ambassador-client --listen addresses (in turn) instead of listening;
    # under TLS this side is then the TLS client: dial_tls, and tls stays None.
    connect: tuple[Address, ...] = ()
    dial_tls: ClientTls | None = None
    # How pooled links spread their streams and check their targets (server.pool).
    pooling: Mapping[Service, PoolSettings] = field(default_factory=dict)
    resolve_interval: float = 30.0  # seconds between two resolutions of a dns: pool member
    # What token_file and tls hold, read once per configuration (with_credentials): the files
    # checked at start or reload are the ones the server then runs with.
    tokens: Mapping[str, bytes] | None = field(default=None, compare=False, repr=False)
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    tls_binding: bytes = field(default=UNBOUND, compare=False, repr=False)

    def watched_files(self) -> list[str | None]:
        """The files besides the config file that a change of reloads."""
        tls, dial = self.tls, self.dial_tls
        files = (tls.cert, tls.key, tls.ca, tls.crl) if tls is not None else ()
        dialing = (dial.ca, dial.cert, dial.key) if dial is not None else ()
        return [self.token_file, *files, *dialing]

    @property
    def dial_server_name(self) -> str | None:
        return None if self.dial_tls is None else self.dial_tls.server_name


def with_credentials(config: ServerConfig) -> ServerConfig:
    """``config`` with its TLS context built and its token file read, unless already done;
    raises ConfigError, in words, for a broken file."""
    context, binding, tokens = config.tls_context, config.tls_binding, config.tokens
    if config.tls is not None and context is None:
        context, binding = bound_server_context(config.tls)
    if config.dial_tls is not None and context is None:
        context = client_context(config.dial_tls)  # its binding comes from each handshake
    if config.token_file is not None and tokens is None:
        tokens, _ = load_tokens(config.token_file)  # its warning is said in Server.start()
    return replace(config, tokens=tokens, tls_context=context, tls_binding=binding)
