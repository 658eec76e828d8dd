"""ambassador-server's command line: parse, build a ServerConfig, run."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import click

from server.admission import (
    STREAMS_PER_IDENTITY,
    UNAUTHENTICATED,
    UNAUTHENTICATED_PER_ADDRESS,
    AdmissionLimits,
)
from server.app import serve
from server.certs_cli import certs
from server.config import ServerConfig
from server.forward import serve_forwarding
from tunnel.errors import ConfigError
from tunnel.operations.observe import print_status
from tunnel.operations.runner import Reload, worker_processes
from tunnel.operations.runtime import run, setup_logging
from tunnel.security.access import parse_access, unmatched
from tunnel.security.allowlist import Allowlist, parse_networks, proxy_header_sources
from tunnel.security.auth import is_loopback, load_tokens
from tunnel.security.binding import UNBOUND
from tunnel.security.tls import ClientTls, ServerTls, bound_server_context, client_context
from tunnel.settings.cli import (
    AutoWorkers,
    accept_proxy_options,
    begin,
    config_option,
    effective_name,
    endpoint_option,
    limits_from,
    links_from_env_option,
    name_option,
    path_option,
    print_effective,
    reloading,
    role_command,
    run_cli,
    setting,
    status_endpoint,
    tls_key_option,
    watched_config_file,
    workers_option,
)
from tunnel.settings.effective import Item, Setting, source_of
from tunnel.settings.helpgroups import GroupedHelp
from tunnel.settings.links import (
    DEFAULT_TUNNEL_PORT,
    Address,
    Catalog,
    LinkError,
    Service,
    links_from_env,
    named_links_from_env,
    parse_address,
    parse_link,
)
from tunnel.settings.pooling import parse_pooling
from tunnel.settings.proxyprotocol import parse_proxy_protocol
from tunnel.settings.websocket import parse_path

log = logging.getLogger("ambassador.server")
PROG = "ambassador-server"


@click.group(
    cls=GroupedHelp, invoke_without_command=True, context_settings={"max_content_width": 100}
)
@config_option
@click.option(
    "--listen",
    default=None,
    envvar="AMBASSADOR_LISTEN",
    metavar="HOST:PORT",
    help=f"Where to accept tunnel connections [default: 0.0.0.0:{DEFAULT_TUNNEL_PORT}].",
)
@click.option(
    "--connect",
    multiple=True,
    envvar="AMBASSADOR_CONNECT",
    metavar="HOST[:PORT]",
    help="Dial out to this ambassador-client --listen instead of listening (for a host behind "
    "NAT or an outbound-only firewall); several are tried in turn. Repeatable.",
)
@click.option(
    "--server-name",
    envvar="AMBASSADOR_SERVER_NAME",
    help="With --connect and TLS: the name the client's certificate must carry "
    "[default: the --connect host].",
)
@click.option(
    "--insecure-plaintext",
    is_flag=True,
    default=False,
    envvar="AMBASSADOR_INSECURE_PLAINTEXT",
    help="Allow --connect without TLS to a host beyond this machine.",
)
@click.option(
    "--link",
    multiple=True,
    envvar="AMBASSADOR_LINK",
    metavar="ALIAS=HOST:PORT",
    help="A backend to offer: ALIAS=TARGET, PORT=TARGET or ALIAS:PORT=TARGET, where TARGET is "
    "HOST:PORT, udp:HOST:PORT (a UDP service) or unix:/PATH (a unix socket); a pool lists "
    "several targets with commas, dns:HOST:PORT for every address of HOST. Repeatable.",
)
@links_from_env_option(
    "Also offer the backends named by Docker link variables (REDIS_PORT_6379_TCP=...)."
)
@click.option(
    "--links-from-env-in-pod",
    is_flag=True,
    default=False,
    envvar="AMBASSADOR_LINKS_FROM_ENV_IN_POD",
    help="Read link variables even in a Kubernetes pod; only with enableServiceLinks: false, "
    "or every Service of the namespace is offered.",
)
@name_option("server", "shown to clients")
@setting("--dial-timeout", click.FloatRange(0.1), 5.0, "Seconds to reach a backend.")
@setting(
    "--handshake-timeout", click.FloatRange(0.1), 10.0, "Seconds a new connection has to say hello."
)
@path_option("--tls-cert", "PEM certificate: serve TLS (with --tls-key).")
@tls_key_option
@path_option("--tls-ca", "PEM CA: require client certificates signed by it (mutual TLS).")
@path_option("--tls-crl", "PEM CRL of --tls-ca: refuse revoked client certificates.")
@click.option(
    "--access",
    multiple=True,
    envvar="AMBASSADOR_ACCESS",
    metavar="IDENTITY=SERVICE[,SERVICE]",
    help="Let a client identity (certificate or token name; * for everyone) reach "
    "these services; once any rule is given, nothing else is reachable. Repeatable.",
)
@click.option(
    "--allow-from",
    multiple=True,
    envvar="AMBASSADOR_ALLOW_FROM",
    metavar="CIDR",
    help="Only these source addresses may open a tunnel connection (10.0.0.0/8, 2001:db8::/32, "
    "192.0.2.7; commas or repeats for more); others are closed at once. Default: any.",
)
@click.option(
    "--websocket-path",
    envvar="AMBASSADOR_WEBSOCKET_PATH",
    metavar="/PATH",
    help="Take each tunnel connection inside a WebSocket upgraded at this path, as an HTTP "
    "ingress passes it (clients use --remote ws://HOST/PATH, or wss:// with TLS). Other "
    "paths are answered 404. Default: plain tunnel connections.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    default=False,
    envvar="AMBASSADOR_REUSE_PORT",
    help="Bind the tunnel port with SO_REUSEPORT, so that a new server process (same user) can "
    "listen beside this one during an upgrade; then SIGTERM this one to drain it.",
)
@accept_proxy_options("", "client")
@click.option(
    "--proxy-protocol",
    multiple=True,
    envvar="AMBASSADOR_PROXY_PROTOCOL",
    metavar="SERVICE=v1|v2",
    help="Send this linked backend a PROXY protocol header (v1 or v2) with the consumer's real "
    "address before its bytes; only for a backend that expects one. Repeatable.",
)
@click.option(
    "--pool-strategy",
    multiple=True,
    envvar="AMBASSADOR_POOL_STRATEGY",
    metavar="SERVICE=STRATEGY",
    help="How a link with several targets spreads its streams: failover (the first target "
    "that works; the default), round-robin or least-streams. Repeatable.",
)
@click.option(
    "--health-check",
    multiple=True,
    envvar="AMBASSADOR_HEALTH_CHECK",
    metavar="SERVICE[=KEY=VALUE,...]",
    help="Probe this link's targets: a TCP connect, or with send=...,expect=... a request and "
    "the start of its answer; keys interval, timeout, rise, fall. Repeatable.",
)
@setting(
    "--resolve-interval",
    click.FloatRange(1),
    30.0,
    "Seconds between two resolutions of a dns:HOST:PORT pool member's name (and at once when "
    "all its addresses fail).",
)
@path_option(
    "--token-file",
    "NAME:SECRET lines: clients must prove they hold one (the token never crosses the wire).",
)
@click.option(
    "--forward",
    is_flag=True,
    default=False,
    envvar="AMBASSADOR_FORWARD",
    help="Drop-in mode: no tunnel; listen on each linked service's own port (on "
    "--forward-bind) and forward to it, as the old socat ambassador did.",
)
@click.option(
    "--forward-bind",
    default="0.0.0.0",
    show_default=True,
    envvar="AMBASSADOR_FORWARD_BIND",
    help="Address the --forward listeners bind to.",
)
@setting(
    "--max-pending-dials",
    click.IntRange(1),
    256,
    "Backend dials one session may have in progress; more wait (up to --dial-timeout).",
)
@setting(
    "--max-unauthenticated",
    click.IntRange(1),
    UNAUTHENTICATED,
    "Connections that have not completed their hello the server holds at once; more are "
    "closed as soon as they are accepted.",
)
@setting(
    "--max-unauthenticated-per-address",
    click.IntRange(1),
    UNAUTHENTICATED_PER_ADDRESS,
    "Of those, how many may come from one address (an IPv6 /64).",
)
@setting(
    "--max-streams-per-identity",
    click.IntRange(1),
    STREAMS_PER_IDENTITY,
    "Backend streams one client identity may hold open, over all its sessions (per process).",
)
@workers_option(
    "Processes serving tunnel connections; each client connection is served by one of them "
    "(the client's --workers opens one connection per process)."
)
@setting(
    "--drain-timeout",
    click.FloatRange(0),
    30.0,
    "On SIGTERM, seconds open streams may finish before the server exits.",
)
@role_command
def cli(ctx: click.Context, /, **params: Any) -> None:
    """Offer backends on this host to ambassador-clients, over one multiplexed connection."""
    if ctx.invoked_subcommand is not None:
        return
    setup_logging(params["log_level"], params["log_format"])
    config, metrics = begin(ctx, params, PROG, build_config)
    if params["check_config"]:
        notes = [tls_note(config.tls)]
        settings = effective_settings(ctx, params, config)
        names = None if config.tokens is None else list(config.tokens)  # read by build_config
        print_effective(ctx, params, settings, names, notes)
        return
    if params["forward"]:
        if params["workers"] > 1 and not isinstance(params["workers"], AutoWorkers):
            raise ConfigError("--workers applies to the tunnel; --forward runs in one process")
        run(serve_forwarding(config, params["forward_bind"], metrics))
        return
    workers = params["workers"]
    if config.connect:
        if workers > 1 and not isinstance(workers, AutoWorkers):
            raise ConfigError(
                "--workers applies to accepted connections; with --connect the server dials "
                "one session, in one process: drop --workers"
            )
        workers = 1
    channel, pool = worker_processes("server", (ctx.obj or {})["argv"], workers)
    if channel is not None:
        metrics = None  # the main process serves every worker's metrics
    load, files = reloading(cli, PROG, ctx, build_config)
    run(
        serve(
            config,
            lambda config: Reload(load, files, config),
            params["drain_timeout"],
            metrics,
            pool,
            channel,
        )
    )


def build_config(params: dict[str, Any], environ: Mapping[str, str]) -> ServerConfig:
    params = dict(params)
    limits = limits_from(params)
    connect = connect_targets(params)
    try:
        listen = parse_address(
            params["listen"] or f"0.0.0.0:{DEFAULT_TUNNEL_PORT}", default_port=DEFAULT_TUNNEL_PORT
        )
    except LinkError as exc:
        raise ConfigError(f"bad --listen: {exc}") from None
    catalog = Catalog(tuple(parse_link(text) for text in params["link"]))
    if params["links_from_env"]:
        catalog = catalog.merge(env_links(catalog, params["links_from_env_in_pod"], environ))
    if not catalog:
        raise ConfigError(
            "nothing to offer: give --link ALIAS=HOST:PORT (or --links-from-env with Docker "
            "link variables set)"
        )
    proxy_protocol = parse_proxy_protocol(params["proxy_protocol"], catalog)
    pooling = parse_pooling(params["pool_strategy"], params["health_check"], catalog)
    access = parse_access(params["access"])
    for warning in unmatched(access, catalog):  # at start and on every reload
        log.warning("%s", warning)
    token_file = params["token_file"]
    # Read once here, so a broken file is a one-line error at start (or keeps the old
    # configuration on a reload), and the server runs with what was checked.
    tokens = None if token_file is None else load_tokens(token_file)[0]
    dial_tls = None
    if connect:
        dial_tls = dialing_tls(params, connect)
        context, binding, tls = (client_context(dial_tls) if dial_tls else None), UNBOUND, None
    else:
        tls = server_tls(params)
        context, binding = bound_server_context(tls) if tls is not None else (None, UNBOUND)
    return ServerConfig(
        connect=connect,
        dial_tls=dial_tls,
        access=access,
        proxy_protocol=proxy_protocol,
        pooling=pooling,
        resolve_interval=params["resolve_interval"],
        accept_proxy_protocol=params["accept_proxy_protocol"],
        websocket_path=websocket_path(params["websocket_path"]),
        reuse_port=params["reuse_port"],
        accept_proxy_from=accept_proxy_from(params, listen),
        allow_from=parse_networks(params["allow_from"], "--allow-from"),
        token_file=token_file,
        tokens=tokens,
        tls=tls,
        tls_context=context,
        tls_binding=binding,
        listen=listen,
        catalog=catalog,
        limits=limits,
        name=params["name"] or os.uname().nodename,
        dial_timeout=params["dial_timeout"],
        max_pending_dials=params["max_pending_dials"],
        handshake_timeout=params["handshake_timeout"],
        max_streams_per_identity=params["max_streams_per_identity"],
        admission=AdmissionLimits(
            params["max_unauthenticated"], params["max_unauthenticated_per_address"]
        ),
    )


def websocket_path(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return parse_path(text)
    except LinkError as exc:
        raise ConfigError(f"--websocket-path: {exc}") from None


def accept_proxy_from(params: Mapping[str, Any], listen: Address) -> Allowlist:
    return proxy_header_sources(
        params["accept_proxy_from"], params["accept_proxy_protocol"], listen
    )


def effective_settings(
    ctx: click.Context, params: dict[str, Any], config: ServerConfig
) -> list[Setting]:
    """What --check-config shows beyond the parsed flags: every link the catalog holds, those
    from link variables named, and the name the server goes by."""
    source = source_of(ctx, "link", watched_config_file(ctx))
    items: dict[Service, Item] = {}
    for text in params["link"]:
        service = parse_link(text)
        items.setdefault(service, Item(service.to_text(), source))
    if params["links_from_env"]:
        for variable, service in named_links_from_env(os.environ):
            items.setdefault(service, Item(service.to_text(), f"link variable {variable}"))
    return [Setting("link", list(items.values()), source), effective_name(ctx, params, config.name)]


def tls_note(tls: ServerTls | None) -> str:
    if tls is None:
        return "TLS: off (no tls-cert and tls-key)"
    if tls.ca is None:
        return "TLS: on; client certificates not required (no tls-ca)"
    return "TLS: on; client certificates signed by tls-ca required (mutual TLS)"


# Kubernetes sets it in every pod; with the default enableServiceLinks: true the environment
# also holds Docker-style link variables for every Service of the namespace.
IN_POD = "KUBERNETES_SERVICE_HOST"


def env_links(explicit: Catalog, in_pod_too: bool, environ: Mapping[str, str]) -> Catalog:
    """The link variables' catalog; in a Kubernetes pod only when explicitly asked for, since
    there they name every Service of the namespace, not the containers linked on purpose."""
    if IN_POD not in environ or in_pod_too:
        return links_from_env(environ)
    if explicit:
        return Catalog()  # --link given: offer those and nothing the pod's variables name
    raise ConfigError(
        f"refusing --links-from-env in a Kubernetes pod ({IN_POD} is set): its link variables "
        "name every Service of the namespace, which would be offered to anyone; give explicit "
        "--link ALIAS=HOST:PORT, or set enableServiceLinks: false in the pod spec and add "
        "--links-from-env-in-pod (AMBASSADOR_LINKS_FROM_ENV_IN_POD=true)"
    )


def connect_targets(params: dict[str, Any]) -> tuple[Address, ...]:
    """The --connect targets; refused together with --listen or --remote's place."""
    if params["connect"] and params["listen"] is not None:
        raise ConfigError(
            "--connect dials out instead of listening: give --connect or --listen, not both"
        )
    if params["connect"]:
        # These shape the tunnel listener, which a dialing server does not have.
        for flag in ("allow_from", "websocket_path", "reuse_port", "accept_proxy_protocol"):
            if params[flag]:
                raise ConfigError(
                    f"--{flag.replace('_', '-')} applies to the connections a listening server "
                    "accepts; with --connect this server dials out: drop it"
                )
    if params["server_name"] and not params["connect"]:
        raise ConfigError("--server-name applies to --connect with TLS (the name the client's "
                          "certificate must carry): drop it, or dial with --connect")  # fmt: skip
    targets = []
    for text in params["connect"]:
        try:
            targets.append(parse_address(text, default_port=DEFAULT_TUNNEL_PORT))
        except LinkError as exc:
            raise ConfigError(f"bad --connect: {exc}") from None
    return tuple(targets)


def dialing_tls(params: dict[str, Any], targets: tuple[Address, ...]) -> ClientTls | None:
    """TLS as the side that dials: --tls-ca checks the listening client's certificate, and
    --tls-cert/--tls-key, when given, are this server's own (a client certificate)."""
    cert, key, ca, crl = (params[k] for k in ("tls_cert", "tls_key", "tls_ca", "tls_crl"))
    if crl is not None:
        raise ConfigError("--tls-crl checks the certificates of clients that dial in; with "
                          "--connect this server dials: drop it")  # fmt: skip
    if ca is None:
        if cert is not None or key is not None:
            raise ConfigError(
                "--connect with --tls-cert needs --tls-ca, the CA that signed the listening "
                "client's certificate, to verify the host it dials"
            )
        if params["server_name"]:
            raise ConfigError("--server-name only applies with TLS (--tls-ca)")
        insecure = [str(t) for t in targets if not is_loopback(t.host)]
        if insecure and not params["insecure_plaintext"]:
            raise ConfigError(
                f"--connect {insecure[0]} without TLS would offer this host's services to "
                "whoever answers at that address, unencrypted; give --tls-ca (and "
                "--tls-cert/--tls-key for mutual TLS), or --insecure-plaintext to accept that"
            )
        return None
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert and --tls-key go together; give both")
    return ClientTls(ca=ca, cert=cert, key=key, server_name=params["server_name"] or None)


def server_tls(params: dict[str, Any]) -> ServerTls | None:
    cert, key, ca, crl = (params[k] for k in ("tls_cert", "tls_key", "tls_ca", "tls_crl"))
    if cert is None and key is None:
        if ca is not None or crl is not None:
            raise ConfigError("--tls-ca and --tls-crl need --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key go together; give both")
    if crl is not None and ca is None:
        raise ConfigError("--tls-crl needs --tls-ca (the CA whose revocations it lists)")
    return ServerTls(cert=cert, key=key, ca=ca, crl=crl)


# Options of ambassador-client, given to this program: what to give instead.
CLIENT_FIXES = {
    "--remote": "a client dials a server with `ambassador-client --remote HOST`; for this "
    "server to dial out instead, give `ambassador-server --connect HOST:PORT` to a client "
    "started with `ambassador-client --listen ADDR`",
    "--expose": "ambassador-client opens the local listeners (`ambassador-client --expose "
    "PORT|ALIAS`); this server offers its backends with --link ALIAS=HOST:PORT",
    "--bind": "it is where ambassador-client's local listeners bind; this server's tunnel "
    "address is --listen HOST:PORT",
}


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(cli, PROG, argv, CLIENT_FIXES))


cli.add_command(certs)


@cli.command()
@endpoint_option
@click.pass_context
def status(
    ctx: click.Context, /, endpoint: str | None, status_config: str | None, **view: Any
) -> None:
    """Print the state of a running ambassador-server (sessions, services, bytes)."""
    print_status(status_endpoint(ctx, endpoint, status_config), "ambassador-server", **view)
