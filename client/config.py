"""What an ambassador-client runs with, built by the CLI from flags, environment and file."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from tunnel.operations.admission import AdmissionLimits
from tunnel.protocol.flows import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FLOWS
from tunnel.protocol.limits import Limits
from tunnel.security.allowlist import LOOPBACK, Allowlist
from tunnel.security.binding import UNBOUND
from tunnel.security.tls import ClientTls, ServerTls, bound_server_context, client_context
from tunnel.settings.links import Address, ExposeSpec
from tunnel.settings.proxy import ProxyRoute
from tunnel.settings.unixpath import SocketAccess


@dataclass(frozen=True, slots=True)
class ClientConfig:
    remotes: tuple[Address, ...]
    expose: tuple[ExposeSpec, ...] = ()  # empty: expose the whole catalog
    bind: str = "127.0.0.1"
    # Who may connect to each exposed port, by service reference ("" for every port); a port
    # with no list is open to whoever can reach it.
    expose_allow: Mapping[str, Allowlist] = field(default_factory=dict)
    sockets: SocketAccess = field(default_factory=SocketAccess)  # exposed unix sockets' mode, owner
    name: str = "ambassador-client"
    limits: Limits = field(default_factory=Limits)
    connect_timeout: float = 5.0
    handshake_timeout: float = 10.0
    # Reconnect: exponential backoff from ``backoff_min`` doubling to ``backoff_max``, with full
    # jitter (a random delay between 0 and the current bound) so clients do not stampede.
    backoff_min: float = 0.1
    backoff_max: float = 10.0
    # A consumer that connects while the tunnel is down waits this long for it.
    link_wait_timeout: float = 10.0
    # UDP exposes: a flow (one source address) ends after this many idle seconds, and each
    # expose holds at most this many flows.
    udp_idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    udp_max_flows: int = DEFAULT_MAX_FLOWS
    # "1": one session, the remotes tried in turn; "all": one to each remote at once, new
    # streams spread across the healthy ones as ``spread`` says (client.sessions).
    sessions: str = "1"
    spread: str = "least-streams"
    tls: ClientTls | None = None  # None: plaintext
    proxy: ProxyRoute | None = None  # None: connect directly
    proxy_credentials_file: str | None = None  # where the proxy's credentials were read
    token: tuple[str, bytes] | None = None  # (name, secret) from --token-file
    token_file: str | None = None  # where ``token`` was read: watched for changes
    # What tls names, built once per configuration (with_context): the files checked at
    # start or reload are the ones the client then connects with.
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    # --listen: servers dial this address (ambassador-server --connect) instead of the client
    # dialing ``remotes``; tokens then holds every host's NAME:SECRET line, and under TLS this
    # side is the TLS server (tls.cert and tls.key its certificate, tls.ca the hosts' CA).
    listen: Address | None = None
    tokens: Mapping[str, bytes] | None = field(default=None, compare=False, repr=False)
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    allow_from: Allowlist = field(default_factory=Allowlist)  # who may dial in; empty: anyone
    # A PROXY header in front of each dialed connection (a load balancer before --listen),
    # and who may send one.
    accept_proxy_protocol: bool = False
    accept_proxy_from: Allowlist = LOOPBACK
    listen_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    listen_binding: bytes = field(default=UNBOUND, compare=False, repr=False)

    def watched_files(self) -> list[str | None]:
        """The files besides the config file that a change of reloads."""
        tls = self.tls
        return [
            self.token_file,
            self.proxy_credentials_file,
            *((tls.ca, tls.cert, tls.key) if tls is not None else ()),
        ]


def with_context(config: ClientConfig) -> ClientConfig:
    """``config`` with its TLS context built, unless already done; raises ConfigError, in
    words, for a broken file."""
    tls = config.tls
    if tls is None or config.tls_context is not None or config.listen_context is not None:
        return config
    if config.listen is not None:
        assert tls.cert is not None and tls.key is not None  # the CLI says so
        context, binding = bound_server_context(ServerTls(tls.cert, tls.key, tls.ca))
        return replace(config, listen_context=context, listen_binding=binding)
    return replace(config, tls_context=client_context(tls))
