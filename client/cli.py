"""ambassador-client's command line: parse, build a ClientConfig, run."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import click
from click.core import ParameterSource

from client.app import serve, serve_helper
from client.config import ClientConfig
from client.sessions import SPREADS
from tunnel.aio.unixlisten import socket_access
from tunnel.errors import ConfigError
from tunnel.operations.admission import (
    UNAUTHENTICATED,
    UNAUTHENTICATED_PER_ADDRESS,
    AdmissionLimits,
)
from tunnel.operations.observe import print_status
from tunnel.operations.runner import worker_processes
from tunnel.operations.runtime import run, setup_logging
from tunnel.protocol.flows import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FLOWS
from tunnel.security.allowlist import (
    LOOPBACK,
    Allowlist,
    parse_expose_allow,
    parse_networks,
    proxy_header_sources,
)
from tunnel.security.auth import is_loopback, load_tokens, token_names
from tunnel.security.binding import UNBOUND
from tunnel.security.certs import parse_pin
from tunnel.security.proxycreds import load_proxy_credentials
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
    proxy_options,
    reloading,
    role_command,
    run_cli,
    setting,
    status_endpoint,
    tls_key_option,
    watched_config_file,
    workers_option,
)
from tunnel.settings.config import Kind
from tunnel.settings.effective import Item, Setting, source_of
from tunnel.settings.helpgroups import GroupedHelp
from tunnel.settings.links import (
    DEFAULT_TUNNEL_PORT,
    Address,
    ExposeSpec,
    LinkError,
    named_seed_links_from_env,
    parse_address,
    seed_links_from,
    seed_links_from_env,
)
from tunnel.settings.proxy import ProxyRoute, proxy_route
from tunnel.settings.websocket import WebSocketAddress, parse_remote

PROG = "ambassador-client"


class SessionCount(click.Choice[str]):
    """``--sessions``: 1 or all; a config file may write ``sessions = 1`` as a number."""

    config_kind = Kind.COUNT

    def __init__(self) -> None:
        super().__init__(["1", "all"], case_sensitive=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return str(super().convert(str(value).strip().lower(), param, ctx))


@click.group(
    cls=GroupedHelp, invoke_without_command=True, context_settings={"max_content_width": 100}
)
@config_option
@click.option(
    "--remote",
    multiple=True,
    envvar="AMBASSADOR_REMOTE",
    metavar="HOST[:PORT]|URL",
    help=f"The ambassador-server to connect to (port {DEFAULT_TUNNEL_PORT} unless given), or "
    "ws://HOST[:PORT]/PATH (wss:// for TLS) to reach it through an HTTP ingress, inside one "
    "WebSocket. Repeatable: tried in turn.",
)
@click.option(
    "--listen",
    default=None,
    envvar="AMBASSADOR_LISTEN",
    metavar="HOST[:PORT]",
    help="Wait for servers to dial in (ambassador-server --connect) on this address instead "
    f"of dialing a --remote (port {DEFAULT_TUNNEL_PORT} unless given); expose a host's "
    "service as HOST/SERVICE.",
)
@click.option(
    "--insecure-plaintext",
    is_flag=True,
    default=False,
    envvar="AMBASSADOR_INSECURE_PLAINTEXT",
    help="Allow --listen without TLS on an address beyond this machine.",
)
@click.option(
    "--allow-from",
    multiple=True,
    envvar="AMBASSADOR_ALLOW_FROM",
    metavar="CIDR",
    help="With --listen: only these source addresses may dial in (10.0.0.0/8, 2001:db8::/32, "
    "192.0.2.7; commas or repeats for more); others are closed at once. Default: any.",
)
@accept_proxy_options("With --listen: ", "server")
@setting(
    "--handshake-timeout",
    click.FloatRange(0.1),
    10.0,
    "Seconds a server has for the TLS handshake and the hello (a --listen client's "
    "connections, and answers to a --remote's hello).",
)
@setting(
    "--max-unauthenticated",
    click.IntRange(1),
    UNAUTHENTICATED,
    "With --listen: connections that have not completed their hello held at once; more are "
    "closed as soon as they are accepted.",
)
@setting(
    "--max-unauthenticated-per-address",
    click.IntRange(1),
    UNAUTHENTICATED_PER_ADDRESS,
    "With --listen: of those, how many may come from one address (an IPv6 /64).",
)
@click.option(
    "--expose",
    multiple=True,
    envvar="AMBASSADOR_EXPOSE",
    metavar="SPEC",
    help="A service to listen for locally: 6379, redis, 16379=redis, 127.0.0.1:16379=6379, "
    "unix:/run/ambassador/redis.sock=redis (a unix socket), udp:127.0.0.1:5353=dns (a UDP "
    "service, on a UDP port), or the seed's "
    "REDIS_PORT_1234_TCP=tcp://HOST:6379 (listen on 1234 for the service HOST published on 6379). "
    "Repeatable; none: the whole catalog.",
)
@click.option(
    "--expose-allow",
    multiple=True,
    envvar="AMBASSADOR_EXPOSE_ALLOW",
    metavar="[SERVICE=]CIDR[,CIDR]",
    help="Only these source addresses may connect to the port exposing SERVICE (as named in "
    "--expose), or without SERVICE= to every exposed port; others are closed at once. "
    "Repeatable. Default: anyone who can reach the port.",
)
@links_from_env_option(
    "Read Docker link variables as the seed did (REDIS_PORT_1234_TCP=tcp://HOST:6379): "
    "HOST is the remote, local port 1234 forwards to the service it published on 6379 "
    "(asked for as redis:6379, then 6379, then redis)."
)
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    envvar="AMBASSADOR_BIND",
    help="Address the local listeners bind to (0.0.0.0 in a container).",
)
@click.option(
    "--expose-socket-mode",
    default="0600",
    show_default=True,
    envvar="AMBASSADOR_EXPOSE_SOCKET_MODE",
    metavar="OCTAL",
    help="Mode of the unix sockets --expose listens on (0660: the owner and its group).",
)
@click.option(
    "--expose-socket-owner",
    envvar="AMBASSADOR_EXPOSE_SOCKET_OWNER",
    metavar="USER[:GROUP]",
    help="Owner of the unix sockets --expose listens on (:GROUP for the group alone); "
    "default: the client's own user.",
)
@name_option("client", "sent in its hello")
@setting("--connect-timeout", click.FloatRange(0.1), 5.0, "Seconds to reach the server.")
@setting(
    "--sessions",
    SessionCount(),
    "1",
    "1: one session, the --remote list tried in turn (failover); all: a session to every "
    "--remote at once, new connections spread across the healthy ones (active-active).",
)
@setting(
    "--spread",
    click.Choice(SPREADS),
    SPREADS[0],
    "With --sessions all, which session a new connection goes to: the one with the fewest "
    "open streams, each in turn, or the first --remote that is up.",
)
@setting(
    "--link-wait-timeout",
    click.FloatRange(0),
    10.0,
    "Seconds a consumer may wait for a tunnel that is down.",
)
@click.option(
    "--tls/--no-tls",
    "tls",
    default=False,
    envvar="AMBASSADOR_TLS",
    help="Speak TLS, verifying the server against the system's CAs "
    "(implied by --tls-ca and --pin).",
)
@path_option("--tls-ca", "PEM CA that signed the server's certificate.")
@path_option("--tls-cert", "This client's PEM certificate, for servers that require one.")
@tls_key_option
@click.option(
    "--server-name",
    envvar="AMBASSADOR_SERVER_NAME",
    help="Name the server's certificate must carry [default: the --remote host].",
)
@click.option(
    "--pin",
    multiple=True,
    envvar="AMBASSADOR_PIN",
    metavar="sha256:BASE64",
    help="Accept only a server whose public key has this SPKI hash "
    "(see 'ambassador-server certs show'). Repeatable.",
)
@setting(
    "--backoff-min",
    click.FloatRange(0.001),
    0.1,
    "Seconds: the first reconnect delay bound; it doubles per failure (full jitter).",
)
@setting(
    "--backoff-max",
    click.FloatRange(0.001),
    10.0,
    "Seconds: the most the reconnect delay bound grows to.",
)
@setting(
    "--udp-idle-timeout",
    click.FloatRange(0.001),
    DEFAULT_IDLE_TIMEOUT,
    "Seconds: a UDP flow (one source address of a udp: expose) with no datagram either way "
    "for this long ends.",
)
@setting(
    "--udp-max-flows",
    click.IntRange(1),
    DEFAULT_MAX_FLOWS,
    "UDP flows one udp: expose holds at once; datagrams from further sources are dropped "
    "and counted.",
)
@workers_option(
    "Processes serving consumer connections, each with its own tunnel connection; while the "
    "main one is busy with bulk data, new connections go to the least busy helper."
)
@path_option(
    "--token-file",
    "A NAME:SECRET line: authenticate with this token (it never crosses the "
    "wire; the server proves it holds it too).",
)
@proxy_options
@role_command
def cli(ctx: click.Context, /, **params: Any) -> None:
    """Expose services of a remote ambassador-server on local ports."""
    if ctx.invoked_subcommand is not None:
        return
    setup_logging(params["log_level"], params["log_format"])
    config, metrics = begin(ctx, params, PROG, build_config)
    if params["check_config"]:
        settings = effective_settings(ctx, params, config)
        print_effective(ctx, params, settings, token_names(params["token_file"]))
        return
    load, files = reloading(cli, PROG, ctx, build_config)
    workers = params["workers"]
    if config.listen is not None:
        if workers > 1 and not isinstance(workers, AutoWorkers):
            raise ConfigError("--workers applies to --remote; a --listen client serves its "
                              "hosts in one process: drop --workers")  # fmt: skip
        workers = 1
    channel, pool = worker_processes("client", (ctx.obj or {})["argv"], workers)
    if channel is not None:
        run(serve_helper(config, channel, load, files))
        return
    run(serve(config, load, files, metrics, pool))


def build_config(params: dict[str, Any], environ: Mapping[str, str]) -> ClientConfig:
    params = dict(params)
    limits = limits_from(params)
    seed_host, expose = seed_links_from(params["expose"])
    if params["links_from_env"]:
        env_host, env_expose = seed_links_from_env(environ)
        if seed_host and env_host and seed_host.lower() != env_host.lower():
            raise ConfigError(
                f"--expose names host {seed_host} but the link variables name {env_host}; "
                "a client tunnels to one server"
            )
        seed_host = seed_host or env_host
        expose = list(dict.fromkeys([*expose, *env_expose]))
    remotes: list[Address] = []
    for text in params["remote"]:
        try:
            remotes.append(parse_remote(text, default_port=DEFAULT_TUNNEL_PORT))
        except LinkError as exc:
            raise ConfigError(f"bad --remote: {exc}") from None
    listen = listen_address(params)
    if listen is not None and remotes:
        raise ConfigError(
            "--listen waits for servers to dial in and --remote dials a server: give one of them"
        )
    if listen is not None and params["sessions"] == "all":
        raise ConfigError(
            "--sessions all keeps a session to every --remote; with --listen the servers dial "
            "in, each its own session already: drop --sessions all"
        )
    if not remotes and seed_host and listen is None:
        remotes.append(Address(seed_host, DEFAULT_TUNNEL_PORT))
    if not remotes and listen is None:
        raise ConfigError(
            "no server to connect to: give --remote HOST[:PORT] "
            "(or a link variable such as REDIS_PORT_6379_TCP=tcp://HOST:6379)"
        )
    token, tokens = None, None
    if params["token_file"] is not None:
        tokens, warning = load_tokens(params["token_file"])
        if warning:
            logging.getLogger("ambassador.client").warning("%s", warning)
        token = next(iter(tokens.items()))
    # Refused as given, not as the environment happens to fill it: the same flags must not
    # start on one host and be refused on the next because https_proxy is set there.
    given = [flag for flag, name in PROXY_FLAGS.items() if params[name]]
    if listen is not None and given:
        raise ConfigError(
            f"{given[0]} carries this client's dial to a --remote; with --listen the servers "
            f"dial in: drop {' and '.join(given)}"
        )
    proxy = client_proxy(params, environ)
    # Built once here, so a broken file is a one-line error at start (or keeps the old
    # configuration on a reload), and the client connects with what was checked.
    listen_context, binding = None, UNBOUND
    if listen is not None:
        tls = listening_tls(params, listen)
        if tls is not None:
            assert tls.cert is not None and tls.key is not None
            listen_context, binding = bound_server_context(ServerTls(tls.cert, tls.key, tls.ca))
        context = None
    else:
        tls = remote_tls(client_tls(params), remotes)
        context = client_context(tls) if tls is not None else None
    return ClientConfig(
        listen=listen,
        allow_from=parse_networks(params["allow_from"], "--allow-from"),
        accept_proxy_protocol=params["accept_proxy_protocol"],
        accept_proxy_from=LOOPBACK
        if listen is None
        else proxy_header_sources(
            params["accept_proxy_from"], params["accept_proxy_protocol"], listen
        ),
        tokens=tokens,
        listen_context=listen_context,
        listen_binding=binding,
        handshake_timeout=params["handshake_timeout"],
        admission=AdmissionLimits(
            params["max_unauthenticated"], params["max_unauthenticated_per_address"]
        ),
        token=token,
        token_file=params["token_file"],
        tls=tls,
        tls_context=context,
        proxy=proxy,
        proxy_credentials_file=params["proxy_credentials_file"],
        remotes=tuple(remotes),
        expose=tuple(expose),
        expose_allow=expose_allow(params["expose_allow"], expose),
        bind=params["bind"],
        sockets=socket_access(params["expose_socket_mode"], params["expose_socket_owner"]),
        name=params["name"] or os.uname().nodename,
        limits=limits,
        connect_timeout=params["connect_timeout"],
        link_wait_timeout=params["link_wait_timeout"],
        sessions=params["sessions"],
        spread=params["spread"],
        backoff_min=params["backoff_min"],
        backoff_max=max(params["backoff_max"], params["backoff_min"]),
        udp_idle_timeout=params["udp_idle_timeout"],
        udp_max_flows=params["udp_max_flows"],
    )


def expose_allow(texts: list[str], expose: list[ExposeSpec]) -> dict[str, Allowlist]:
    """--expose-allow's lists, each naming an exposed service (when --expose lists them)."""
    lists = parse_expose_allow(texts)
    named = {spec.service for spec in expose}
    for service in lists:
        if service and named and service not in named:
            raise ConfigError(
                f"--expose-allow names {service!r}, which no --expose exposes; use one of "
                f"{', '.join(sorted(named))}, or give CIDRs alone for every exposed port"
            )
    return lists


def effective_settings(
    ctx: click.Context, params: dict[str, Any], config: ClientConfig
) -> list[Setting]:
    """What --check-config shows beyond the parsed flags: the exposes link variables add, the
    remote they name, TLS when a CA, pin or certificate implies it, the name sent."""
    config_file = watched_config_file(ctx)
    source = source_of(ctx, "expose", config_file)
    seed_host, specs = seed_links_from(params["expose"])
    # A seed form is shown as written: its alternatives (ALIAS:PORT, then PORT, then ALIAS) have
    # no shorter text that --expose would read back the same way.
    items = {
        spec: Item(text if spec.alternatives else spec.to_text(), source)
        for text, spec in zip(params["expose"], specs, strict=True)
    }
    variables = named_seed_links_from_env(os.environ) if params["links_from_env"] else []
    for variable, seed in variables:
        text = f"{variable}={os.environ[variable]}"
        items.setdefault(seed.expose, Item(text, f"link variable {variable}"))
    settings = [Setting("expose", list(items.values()), source)]
    if not params["remote"] and config.listen is None:  # a listening client dials nothing
        named_by = "expose" if seed_host else f"link variable {variables[0][0]}"
        remotes = [str(remote) for remote in config.remotes]
        settings.append(Setting("remote", remotes, f"the host {named_by} names"))
    if config.tls is not None and not params["tls"]:
        implied_by = [key for key in ("tls_ca", "pin", "tls_cert") if params[key]]
        why = "implied by " + ", ".join(key.replace("_", "-") for key in implied_by)
        settings.append(Setting("tls", True, why))
    return [*settings, effective_name(ctx, params, config.name)]


PROXY_FLAGS = {"--proxy": "proxy", "--proxy-from-env": "proxy_from_env"}


def client_proxy(params: dict[str, Any], environ: Mapping[str, str]) -> ProxyRoute | None:
    """The egress proxy the tunnel is dialed through, its credentials read; None: direct."""
    path = params["proxy_credentials_file"]
    if path is not None and not (params["proxy"] or params["proxy_from_env"]):
        raise ConfigError("--proxy-credentials-file needs --proxy or --proxy-from-env")
    credentials = None
    if path is not None:
        credentials, warning = load_proxy_credentials(path)
        if warning:
            logging.getLogger("ambassador.client").warning("%s", warning)
    return proxy_route(params["proxy"], params["proxy_from_env"], environ, credentials)


def _from_environment(name: str) -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) is ParameterSource.ENVIRONMENT


# What shapes the tunnel listener of a client with --listen, and means nothing without one.
LISTENER_FLAGS = ("insecure_plaintext", "allow_from", "accept_proxy_protocol", "accept_proxy_from")


def listen_address(params: dict[str, Any]) -> Address | None:
    if params["listen"] is None:
        for flag in LISTENER_FLAGS:
            # One environment (an image's, a shared env file) often serves both roles: the
            # server's AMBASSADOR_ALLOW_FROM means nothing to a client without --listen, and
            # there is nothing here for it to guard. Given on the command line or in the
            # config file, it is a mistake worth a line.
            if params[flag] and not _from_environment(flag):
                raise ConfigError(
                    f"--{flag.replace('_', '-')} applies to --listen (the servers that dial "
                    "this client); a client that dials a --remote has no tunnel listener: add "
                    "--listen or drop it"
                )
        return None
    try:
        return parse_address(params["listen"], default_port=DEFAULT_TUNNEL_PORT)
    except LinkError as exc:
        raise ConfigError(f"bad --listen: {exc}") from None


def listening_tls(params: dict[str, Any], listen: Address) -> ClientTls | None:
    """TLS as the side that listens: --tls-cert/--tls-key are this client's (a server
    certificate, which dialing servers verify), --tls-ca requires theirs (mutual TLS)."""
    ca, cert, key = (params[k] for k in ("tls_ca", "tls_cert", "tls_key"))
    for flag in ("pin", "server_name"):
        if params[flag]:
            raise ConfigError(
                f"--{flag.replace('_', '-')} checks the server this client dials; with --listen "
                "the servers dial in: drop it (--tls-ca checks their certificates)"
            )
    if cert is None and key is None:
        if ca is not None or params["tls"]:
            raise ConfigError(
                "--listen with TLS needs this client's certificate: give --tls-cert and "
                "--tls-key (a server certificate: 'ambassador-server certs server')"
            )
        if not is_loopback(listen.host) and not params["insecure_plaintext"]:
            raise ConfigError(
                f"--listen {listen} without TLS would let anyone who reaches it offer services "
                "to this host's consumers, and carry their traffic unencrypted; give "
                "--tls-cert/--tls-key (and --tls-ca for host certificates), or "
                "--insecure-plaintext to accept that"
            )
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key go together; give both")
    return ClientTls(ca=ca, cert=cert, key=key)


def client_tls(params: dict[str, Any]) -> ClientTls | None:
    ca, cert, key, name = (params[k] for k in ("tls_ca", "tls_cert", "tls_key", "server_name"))
    pins = tuple(params["pin"])
    if not (params["tls"] or ca or cert or key or pins):
        if name:
            raise ConfigError("--server-name only applies with TLS (--tls-ca, --pin or --tls)")
        return None
    for pin in pins:
        try:
            parse_pin(pin)
        except ConfigError as exc:
            raise ConfigError(f"--pin: {exc}") from None
    return ClientTls(ca=ca, cert=cert, key=key, server_name=name or None, pins=pins)


def remote_tls(tls: ClientTls | None, remotes: list[Address]) -> ClientTls | None:
    """TLS as the remotes' schemes say: a wss:// remote implies it (as --tls does), and a
    ws:// remote, which is plaintext, cannot have it."""
    kinds = {remote.secure for remote in remotes if isinstance(remote, WebSocketAddress)}
    if False in kinds and (tls is not None or True in kinds):
        raise ConfigError(
            "a ws:// remote is plaintext, but TLS is asked for (a wss:// remote, --tls, "
            "--tls-ca, --pin or --tls-cert); write the remote as wss:// for TLS"
        )
    if True in kinds and tls is None:
        return ClientTls()  # verified against the system's CAs, like --tls
    return tls


@cli.command()
@click.option(
    "--streams",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Concurrent connections through the tunnel.",
)
@click.option(
    "--megabytes",
    type=click.IntRange(1, 4096),
    default=32,
    show_default=True,
    help="MiB each connection sends (and receives back).",
)
def demo(streams: int, megabytes: int) -> None:
    """Run the pair on this machine against a built-in echo service and show what crossed."""
    from client.demo import run_demo

    setup_logging("warning")
    sys.exit(run(run_demo(streams, megabytes)))


@cli.command()
@endpoint_option
@click.pass_context
def status(
    ctx: click.Context, /, endpoint: str | None, status_config: str | None, **view: Any
) -> None:
    """Print the state of a running ambassador-client (remotes, services, bytes)."""
    print_status(status_endpoint(ctx, endpoint, status_config), "ambassador-client", **view)


# Options of ambassador-server, given to this program: what to give instead.
SERVER_FIXES = {
    "--connect": "the server dials with `ambassador-server --connect HOST:PORT` to a client "
    "started with `ambassador-client --listen ADDR`",
    "--link": "backends are offered by `ambassador-server --link ALIAS=HOST:PORT`; this "
    "client listens for them with --expose PORT|ALIAS",
}


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(cli, PROG, argv, SERVER_FIXES))
