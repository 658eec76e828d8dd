"""``ambassador-server certs``: a private CA with the server's and the clients' certificates.

Each command reads its flags and files, reads the clock once, lets :mod:`tunnel.security.certs` do
the work and says what it wrote and what to run next. Every problem a user can cause (no CA yet, a
file that exists, a file that is not what it should be) ends as one line from ``run_cli``.

Layout of a certificate directory, as ``certs init`` makes it:

    ca.pem  ca-key.pem          the CA; its key stays here and signs everything else
    server.pem  server-key.pem  for --tls-cert / --tls-key
    NAME.pem  NAME-key.pem      one pair per client (``certs client NAME``)
    crl.pem                     revoked serials, for --tls-crl (``certs revoke``)
    issued.txt                  the serials issued to each name, so revoking a name's file
                                revokes its renewed and replaced certificates too
"""

from __future__ import annotations

import math
import re
import shlex
import socket
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from tunnel.errors import ConfigError
from tunnel.security import certs as c
from tunnel.security import issued
from tunnel.security import pemfiles as pem

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
CRL = "crl.pem"
# A client named like one of the CA's or server's files would overwrite it.
RESERVED_NAMES = {"ca", "ca-key", "server", "server-key", "crl"}

DEFAULT_DAYS = 825  # the longest lifetime browsers ever accepted for a leaf; a habit worth keeping
DEFAULT_CA_DAYS = 3650

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="The directory holding ca.pem and ca-key.pem.",
)
_force_option = click.option("--force", is_flag=True, help="Replace files that exist.")
_ca_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The directory holding ca.pem and ca-key.pem [default: FILE's directory when it "
    "holds them, else the current one].",
)


@click.group(invoke_without_command=True, context_settings={"max_content_width": 100})
@click.pass_context
def certs(ctx: click.Context) -> None:
    """Make and inspect the files for --tls-cert, --tls-key, --tls-ca and --tls-crl.

    Start with `certs init DIR`.
    """
    # click's own "no command" answer is a usage error, which run_cli would print as one.
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@certs.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--san",
    multiple=True,
    metavar="NAME|IP",
    help="A host name or IP address clients reach this server by. Repeatable "
    "[default: the host name, localhost, 127.0.0.1 and ::1].",
)
@click.option("--cn", default="", help="The server certificate's common name [default: host name].")
@click.option("--days", type=click.IntRange(1), default=DEFAULT_DAYS, show_default=True)
@click.option("--ca-days", type=click.IntRange(1), default=DEFAULT_CA_DAYS, show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="Replace existing files; certificates the old CA issued then stop verifying.",
)
def init(
    directory: Path, san: tuple[str, ...], cn: str, days: int, ca_days: int, force: bool
) -> None:
    """Create a CA and a server certificate in DIRECTORY.

    DIRECTORY is made (mode 0700) if it does not exist; existing files are kept unless --force.
    """
    now = datetime.now(UTC)
    host = socket.gethostname()
    paths = {name: directory / name for name in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)}
    if not force:
        # Checked before anything is written, so a refusal leaves no half-made directory.
        for path in paths.values():
            if path.exists() or path.is_symlink():
                raise ConfigError(f"{path} exists; pass --force to replace it")
    sans = list(san) or default_sans(host)
    ca_key, ca_cert = c.make_ca(f"Ambassador CA {host}"[:64], ca_days, now=now)
    server_key, server_cert = c.issue_server_cert(ca_key, ca_cert, cn or host, sans, days, now=now)
    _make_dir(directory)
    if directory.stat().st_mode & stat.S_IWOTH:
        click.echo(
            f"warning: {directory} is writable by every user, who can add or (without the "
            f"sticky bit) replace files beside the CA key; chmod 700 {_q(directory)} or use a "
            "directory of your own",
            err=True,
        )
    pem.write_private(paths[CA_KEY], pem.key_pem(ca_key), force)
    pem.write_public(paths[CA_CERT], pem.cert_pem(ca_cert), force)
    pem.write_private(paths[SERVER_KEY], pem.key_pem(server_key), force)
    pem.write_public(paths[SERVER_CERT], pem.cert_pem(server_cert), force)
    issued.forget_all(directory)
    _record(directory, server_cert)

    info = c.describe(server_cert, now)
    _wrote(paths[CA_CERT], f"CA certificate, valid {ca_days} days: clients need it (--tls-ca)")
    _wrote(paths[CA_KEY], "CA key (mode 0600): it signs every certificate; keep it here")
    _wrote(paths[SERVER_CERT], f"server certificate for {', '.join(info.sans)}, {days} days")
    _wrote(paths[SERVER_KEY], "server key (mode 0600)")
    if force and (directory / CRL).exists():
        click.echo(f"note: {directory / CRL} was signed by the old CA; remove it")
    click.echo(f"server pin: {info.pin}")
    remote = next((s for s in info.sans if s not in _LOOPBACK), host)
    d = directory
    click.echo("\nnext:")
    click.echo(f"  ambassador-server certs client NAME --dir {_q(d)}   # one per client")
    click.echo(
        f"  ambassador-server --tls-cert {_q(d / SERVER_CERT)} --tls-key {_q(d / SERVER_KEY)}"
        f" --tls-ca {_q(d / CA_CERT)} --link ..."
    )
    click.echo(f"  # on the client host, with {CA_CERT}, NAME.pem and NAME-key.pem copied there:")
    click.echo(_client_command(remote, "NAME"))
    click.echo(f"  # (or trust this server's key rather than the CA: --pin {info.pin})")


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@certs.command()
@_dir_option
@click.option(
    "--san",
    multiple=True,
    metavar="NAME|IP",
    help="A host name or IP address clients reach this server by; the full list. Repeatable "
    "[default: the names of the current server certificate].",
)
@click.option("--cn", default="", help="The common name [default: the current certificate's].")
@click.option("--days", type=click.IntRange(1), default=DEFAULT_DAYS, show_default=True)
@click.option("--new-key", is_flag=True, help="Make a new key too (the server's pin then changes).")
def server(directory: Path, san: tuple[str, ...], cn: str, days: int, new_key: bool) -> None:
    """Reissue the server certificate under the same CA, e.g. with other --san names.

    Client certificates stay valid: the CA does not change. The key is kept (and so the pin)
    unless --new-key; the old certificate is kept as server.pem.old.
    """
    now = datetime.now(UTC)
    ca_key, ca_cert = _load_ca(directory)
    cert_path, key_path = directory / SERVER_CERT, directory / SERVER_KEY
    old = pem.load_cert(cert_path) if cert_path.exists() else None
    if old is not None and not c.issued_by(old, ca_cert):
        raise ConfigError(f"{cert_path} was not issued by the CA in {directory}; check --dir")
    if not san and old is None:
        raise ConfigError(f"{cert_path} does not exist: give the names with --san")
    sans = list(san) if san else list(c.describe(old, now).sans) if old is not None else []
    common_name = cn or (c.common_name(old.subject) if old is not None else socket.gethostname())
    if new_key or not key_path.exists():
        fresh, cert = c.issue_server_cert(ca_key, ca_cert, common_name, sans, days, now=now)
        pem.write_private(key_path, pem.key_pem(fresh), force=True)
    else:
        key = pem.load_key(key_path)
        if old is not None:
            c.check_key_matches(old, key, str(cert_path), str(key_path))
        cert = c.server_cert_for(
            ca_key, ca_cert, key.public_key(), common_name, sans, days, now=now
        )
    if old is not None:
        pem.write_public(cert_path.with_name(SERVER_CERT + ".old"), pem.read_file(cert_path), True)
    pem.write_public(cert_path, pem.cert_pem(cert), force=True)
    _record(directory, cert)
    info = c.describe(cert, now)
    _wrote(cert_path, f"server certificate for {', '.join(info.sans)}, {days} days")
    if old is not None:
        _wrote(cert_path.with_name(SERVER_CERT + ".old"), "the certificate it replaces")
    click.echo(f"server pin: {info.pin}" + ("" if new_key else " (the key is unchanged)"))
    click.echo(
        "reload ambassador-server to use it (SIGHUP, e.g. `systemctl reload ambassador-server`); "
        "client certificates and the CA are unchanged"
    )


def default_sans(host: str) -> list[str]:
    """The host name (when it is a valid DNS name), then the loopback names."""
    names = [] if host in _LOOPBACK else [host]
    try:
        c.parse_sans(names)
    except ConfigError:
        click.echo(f"note: the host name {host!r} is not a DNS name; give --san to add names")
        names = []
    return [*names, "localhost", "127.0.0.1", "::1"]


@certs.command()
@click.argument("name")
@_dir_option
@click.option("--days", type=click.IntRange(1), default=DEFAULT_DAYS, show_default=True)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write NAME.pem and NAME-key.pem [default: --dir].",
)
@_force_option
def client(name: str, directory: Path, days: int, out_dir: Path | None, force: bool) -> None:
    """Issue NAME.pem and NAME-key.pem for a client.

    NAME is the certificate's common name: the identity the server sees for this client.
    """
    if not _CLIENT_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise ConfigError(
            f"bad client name {name[:80]!r}: use up to 64 letters, digits, '.', '_', '@' or '-', "
            f"starting with a letter or digit, and none of {', '.join(sorted(RESERVED_NAMES))}"
        )
    now = datetime.now(UTC)
    ca_key, ca_cert = _load_ca(directory)
    out = directory if out_dir is None else out_dir
    cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
    if not force:
        for path in (cert_path, key_path):
            if path.exists() or path.is_symlink():
                raise ConfigError(f"{path} exists; pass --force to replace it")
    key, cert = c.issue_client_cert(ca_key, ca_cert, name, days, now=now)
    _make_dir(out)
    pem.write_private(key_path, pem.key_pem(key), force)
    pem.write_public(cert_path, pem.cert_pem(cert), force)
    _record(directory, cert)
    _wrote(cert_path, f"client certificate for {name!r}, {days} days; {name} is its identity")
    _wrote(key_path, "client key (mode 0600)")
    click.echo(f"pin: {c.spki_pin(cert)}")
    click.echo(
        f"\nnext: copy {_q(directory / CA_CERT)}, {_q(cert_path)} and {_q(key_path)} to the "
        "client host and run there:"
    )
    click.echo(_client_command("SERVER", name))


_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@certs.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def show(file: Path) -> None:
    """Print a certificate's names, validity and pin.

    Given a CRL (crl.pem), print the serials it revokes and until when it is valid.
    """
    now = datetime.now(UTC)
    if pem.pem_label(pem.read_file(file)) == "X509 CRL":
        _show_crl(file, pem.load_crl(file), now)
        return
    info = c.describe(pem.load_cert(file), now)
    click.echo(str(file))
    for label, value in [
        ("subject", info.subject_cn or "(no common name)"),
        ("issuer", info.issuer_cn or "(no common name)"),
        ("names", ", ".join(info.sans) or "(none)"),
        ("usage", ", ".join(info.usages) or "(any)"),
        ("valid", f"{_when(info.not_before)} to {_when(info.not_after)} ({info.validity_text})"),
        ("serial", f"{info.serial:#x}"),
        ("CA", "yes: it signs certificates" if info.is_ca else "no"),
        ("pin", info.pin),
    ]:
        click.echo(f"  {label + ':':9} {value}")


def _show_crl(file: Path, crl: x509.CertificateRevocationList, now: datetime) -> None:
    click.echo(str(file))
    click.echo(f"  {'issuer:':9} {c.common_name(crl.issuer)}")
    next_update = crl.next_update_utc
    until = "(no end)" if next_update is None else _when(next_update)
    expired = ""
    if next_update is not None and next_update < now:
        expired = " EXPIRED: a server checking it refuses every client"
    click.echo(f"  {'valid:':9} {_when(crl.last_update_utc)} to {until}{expired}")
    serials = [f"{entry.serial_number:#x}" for entry in crl]
    click.echo(f"  {'revoked:':9} {', '.join(serials) or '(none)'}")


@certs.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_ca_dir_option
@click.option(
    "--days",
    type=click.IntRange(1),
    default=None,
    help="Lifetime of the new certificate [default: the old one's].",
)
def renew(file: Path, directory: Path | None, days: int | None) -> None:
    """Reissue a certificate in place; the old one is kept as FILE.old.

    Same key, names and usage, new serial and validity: the key file is untouched and the pin
    stays the same. FILE may be the CA certificate.
    """
    now = datetime.now(UTC)
    old_bytes = pem.read_file(file)
    old = pem.load_cert(file)
    directory = _ca_dir_for(file, directory)
    ca_key, ca_cert = _load_ca(directory)
    if days is None:
        lifetime = old.not_valid_after_utc - old.not_valid_before_utc
        days = max(1, round(lifetime.total_seconds() / 86400))
    new = c.renew(ca_key, ca_cert, old, days, now)
    backup = file.with_name(file.name + ".old")
    pem.write_public(backup, old_bytes, force=True)
    pem.write_public(file, pem.cert_pem(new), force=True)
    _record(directory, old)  # issued before the record was kept, perhaps
    _record(directory, new)
    info = c.describe(new, now)
    click.echo(
        f"renewed {file}: serial {info.serial:#x}, valid until {_when(info.not_after)} "
        f"({days} days); the old one is {backup}"
    )
    click.echo(f"the key and its pin are unchanged: {info.pin}")
    if info.is_ca:
        click.echo("certificates this CA issued still verify (same key and name)")
    else:
        role = "ambassador-client" if info.usages == ("client",) else "ambassador-server"
        click.echo(
            f"reload the program that uses it to pick it up (SIGHUP, e.g. `systemctl reload "
            f"{role}`); no restart needed"
        )


@certs.command()
@click.argument("target", metavar="FILE|SERIAL")
@_ca_dir_option
@click.option(
    "--days",
    type=click.IntRange(1),
    default=None,
    help="How long crl.pem stays valid [default: until the CA expires].",
)
def revoke(target: str, directory: Path | None, days: int | None) -> None:
    """Revoke a certificate: list it in DIR/crl.pem.

    Give its file or its serial number (decimal, or hex with 0x). A file revokes every
    certificate this CA issued to its name (those it replaced by `certs renew` or `--force`
    too); a serial revokes that one. The server refuses the certificates a CRL lists when
    started with --tls-crl DIR/crl.pem.
    """
    now = datetime.now(UTC)
    path = Path(target)
    directory = _ca_dir_for(path, directory) if path.exists() else directory or Path(".")
    ca_key, ca_cert = _load_ca(directory)
    serials, what = _revocation_target(target, directory, ca_cert)
    crl_path = directory / CRL
    previous = pem.load_crl(crl_path) if crl_path.exists() else None
    if previous is not None and not c.crl_issued_by(previous, ca_cert):
        raise ConfigError(f"{crl_path} was signed by another CA; move it away and revoke again")
    already = previous is not None and all(
        previous.get_revoked_certificate_by_serial_number(serial) is not None for serial in serials
    )
    if days is None:
        # Rounded up: a CRL that expires before its CA would lock out every client.
        days = max(1, math.ceil((ca_cert.not_valid_after_utc - now) / timedelta(days=1)))
    crl = c.make_crl(ca_key, ca_cert, serials, now, days, previous=previous)
    pem.write_public(crl_path, pem.crl_pem(crl), force=True)
    state = "already revoked" if already else "revoked"
    click.echo(f"{state}: {what}")
    click.echo(f"{crl_path} lists {_count(len(crl), 'serial')}, valid {days} days")
    click.echo(
        f"start the server with --tls-crl {_q(crl_path)}, or reload it if it runs (SIGHUP, "
        "e.g. `systemctl reload ambassador-server`): it then refuses these certificates and "
        "closes their sessions"
    )


def _revocation_target(
    target: str, directory: Path, ca_cert: x509.Certificate
) -> tuple[list[int], str]:
    """The serials to revoke, and a description of exactly which they are."""
    path = Path(target)
    if path.exists():
        cert = pem.load_cert(path)
        if not c.issued_by(cert, ca_cert):
            raise ConfigError(f"{path} was not issued by this CA; nothing to revoke here")
        if c.is_ca(cert):
            raise ConfigError(f"{path} is the CA itself; replace it with `certs init --force`")
        kind, name = _kind(cert), c.common_name(cert.subject)
        earlier = [s for s in issued.serials_for(directory, kind, name) if s != cert.serial_number]
        backup = path.with_name(path.name + ".old")  # what `certs renew` replaced
        if backup.exists():
            old = pem.load_cert(backup)
            same = c.issued_by(old, ca_cert) and c.common_name(old.subject) == name
            if same and old.serial_number not in (cert.serial_number, *earlier):
                earlier.append(old.serial_number)
        what = f"{path} (serial {cert.serial_number:#x})"
        if earlier:
            listed = ", ".join(f"{serial:#x}" for serial in earlier)
            what += f" and every earlier {kind} certificate issued to {name!r} ({listed})"
        else:
            what += (
                f"; {directory / issued.ISSUED} records no other {kind} certificate issued to "
                f"{name!r} (revoke any other by its serial)"
            )
        return [cert.serial_number, *earlier], what
    try:
        serial = int(target, 0)
    except ValueError:
        raise ConfigError(
            f"{target[:80]!r}: no such file, and not a serial number (decimal, or hex with 0x)"
        ) from None
    if serial <= 0:
        raise ConfigError(f"bad serial {target!r}: serial numbers are positive")
    return [serial], f"serial {serial:#x}"


def _ca_dir_for(file: Path, directory: Path | None) -> Path:
    """The CA directory for a command on ``file``: --dir, else beside the file, else here."""
    if directory is not None:
        return directory
    for candidate in (file.parent, Path(".")):
        if (candidate / CA_CERT).exists() and (candidate / CA_KEY).exists():
            return candidate
    raise ConfigError(
        f"no CA beside {file} ({file.parent / CA_CERT} is missing) nor in the current "
        "directory: give --dir, the directory holding the ca.pem and ca-key.pem that issued it"
    )


def _kind(cert: x509.Certificate) -> str:
    # Usages do not depend on the moment asked about: any will do, and no clock is read.
    usages = c.describe(cert, cert.not_valid_before_utc).usages
    return "client" if usages == ("client",) else "server"


def _record(directory: Path, cert: x509.Certificate) -> None:
    if not c.is_ca(cert):
        issued.record(directory, cert.serial_number, _kind(cert), c.common_name(cert.subject))


def _load_ca(directory: Path) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for path in (cert_path, key_path):
        if not path.exists():
            raise ConfigError(
                f"no CA in {directory} ({path} is missing): run `ambassador-server certs init "
                f"{directory}` first, or give --dir"
            )
    cert, key = pem.load_pair(cert_path, key_path)
    return key, cert


def _make_dir(directory: Path) -> None:
    try:
        # 0700: the directory holds private keys; the mode applies only if we create it.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{directory} exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror}") from None


def _client_command(remote: str, name: str) -> str:
    return (
        f"  ambassador-client --remote {_q(remote)} --tls-ca {CA_CERT} --tls-cert {name}.pem "
        f"--tls-key {name}-key.pem ..."
    )


def _wrote(path: Path, what: str) -> None:
    click.echo(f"wrote {path!s:28} {what}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _q(value: object) -> str:
    return shlex.quote(str(value))
