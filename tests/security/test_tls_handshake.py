"""Clients a mutual-TLS server must turn away, and how both sides say why.

One ambassador-server requires client certificates signed by its CA; alice's client stays
connected to it for the whole module. Each test starts a client that must not get in: it
never gets a welcome, its consumer gets no data, each side logs one line naming the cause (the
server one per connection, the client one per cause, not one per retry), and alice's session
carries on untouched.
"""

from __future__ import annotations

import ssl

import pytest

from tests.security.conftest import (
    Attempt,
    Certificates,
    Client,
    Programs,
    Server,
    assert_each_refused_once,
    assert_not_let_in,
    assert_one_client_line,
    assert_still_serving,
    bad_attempt,
    echo,
    tls_connect,
)
from tunnel.security.tlserrors import describe_tls_error


@pytest.fixture(scope="module")
def main(module_programs: Programs, certs: Certificates, echo_port: int) -> tuple[Server, Client]:
    """The mutual-TLS server, and alice's client connected to it throughout."""
    pki = certs.main
    server = module_programs.server(
        *pki.server_args(), "--link", f"echo=127.0.0.1:{echo_port}", "--handshake-timeout", "2"
    )
    alice = module_programs.good_client(
        server, "--tls-ca", str(pki.ca), *pki.client("alice").args(), identity="alice"
    )
    return server, alice


def attempt(
    programs: Programs, main: tuple[Server, Client], *client_args: str
) -> tuple[Attempt, int]:
    server, _ = main
    since = server.program.mark()
    return bad_attempt(programs, server, *client_args), since


def check_refused(
    main: tuple[Server, Client], result: Attempt, since: int, client: str, server_says: str
) -> None:
    server, alice = main
    assert_not_let_in(result)
    assert_one_client_line(result, client)
    assert_each_refused_once(result.server_lines, [alice.peer_port or 0], server_says)
    assert_still_serving(server, alice, since)


def test_no_client_certificate(
    programs: Programs, main: tuple[Server, Client], certs: Certificates
) -> None:
    result, since = attempt(programs, main, "--tls-ca", str(certs.main.ca))
    check_refused(
        main, result, since,
        client="no client certificate was presented",
        server_says="no client certificate was presented",
    )  # fmt: skip


def test_client_certificate_from_another_ca(
    programs: Programs, main: tuple[Server, Client], certs: Certificates
) -> None:
    mallory = certs.other.client("mallory")
    result, since = attempt(programs, main, "--tls-ca", str(certs.main.ca), *mallory.args())
    check_refused(
        main, result, since,
        client="does not trust our certificate's CA",
        server_says="not signed by the trusted CA",
    )  # fmt: skip


def test_expired_client_certificate(
    programs: Programs, main: tuple[Server, Client], certs: Certificates
) -> None:
    old = certs.expired_client
    result, since = attempt(programs, main, "--tls-ca", str(certs.main.ca), *old.args())
    check_refused(
        main, result, since,
        client="says our certificate has expired",
        server_says="certificate has expired",
    )  # fmt: skip


def test_client_certificate_not_yet_valid(
    programs: Programs, main: tuple[Server, Client], certs: Certificates
) -> None:
    # The TLS alert for "not yet valid" is a generic bad_certificate: the client can only say
    # that the server rejected its certificate; the server names the cause.
    early = certs.future_client
    result, since = attempt(programs, main, "--tls-ca", str(certs.main.ca), *early.args())
    check_refused(
        main, result, since,
        client="rejected our certificate",
        server_says="certificate is not yet valid",
    )  # fmt: skip


def test_server_name_mismatch(
    programs: Programs, main: tuple[Server, Client], certs: Certificates
) -> None:
    alice = certs.main.client("alice")
    result, since = attempt(
        programs, main, "--tls-ca", str(certs.main.ca), *alice.args(),
        "--server-name", "wrong.example",
    )  # fmt: skip
    check_refused(
        main, result, since,
        client="does not name this host",
        server_says="the peer rejected our certificate",
    )  # fmt: skip
    assert "wrong.example" in result.client_warnings[0]


@pytest.fixture(scope="module")
def wrong_pin(
    module_programs: Programs, main: tuple[Server, Client], certs: Certificates
) -> tuple[Attempt, int]:
    """A pin-only client (no --tls-ca) pinning another server's key; run once, two checks."""
    alice = certs.main.client("alice")
    return attempt(module_programs, main, "--pin", certs.other.server_pin, *alice.args())


def test_wrong_pin_is_refused_by_the_client(
    wrong_pin: tuple[Attempt, int], main: tuple[Server, Client], certs: Certificates
) -> None:
    result, since = wrong_pin
    server, alice = main
    assert_not_let_in(result)
    line = assert_one_client_line(result, "matches no --pin")
    assert certs.main.server_pin in line  # the key it did see, to compare with `certs show`
    assert_still_serving(server, alice, since)


def test_wrong_pin_hang_up_is_logged_by_the_server(
    wrong_pin: tuple[Attempt, int], main: tuple[Server, Client]
) -> None:
    result, _ = wrong_pin
    _, alice = main
    # Any words will do: the server cannot know why, only that the peer left at once.
    assert_each_refused_once(result.server_lines, [alice.peer_port or 0])


def test_right_pin_without_ca_is_accepted(
    programs: Programs, main: tuple[Server, Client], certs: Certificates
) -> None:
    server, alice = main
    since = server.program.mark()
    pinned = programs.good_client(
        server, "--pin", certs.main.server_pin, *certs.main.client("alice").args(),
        identity="alice",
    )  # fmt: skip
    assert echo(pinned.port, b"pinned\n") == b"pinned\n"
    pinned.program.stop()
    assert_still_serving(server, alice, since)


def test_plaintext_client_to_tls_port(programs: Programs, main: tuple[Server, Client]) -> None:
    server, alice = main
    since = server.program.mark()
    result = bad_attempt(programs, server)
    assert_not_let_in(result)
    assert result.client_warnings, result.client_log
    for line in result.client_warnings:  # the wording varies between retries; see the report
        assert "expects TLS" in line, line
    assert_each_refused_once(result.server_lines, [alice.peer_port or 0], "does not speak TLS")
    assert_still_serving(server, alice, since)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_is_refused(main: tuple[Server, Client]) -> None:
    server, alice = main
    since = server.program.mark()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot be set up for TLS 1.1: {exc}")
    with pytest.raises(ssl.SSLError) as refused:
        tls_connect(server, context).close()
    if "NO_PROTOCOLS_AVAILABLE" in str(refused.value) or "no protocols" in str(refused.value):
        pytest.skip(f"this OpenSSL cannot build a TLS 1.1 ClientHello: {refused.value}")
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value
    # What an ambassador-client would log for the same alert:
    assert "TLS 1.2 or newer" in describe_tls_error(refused.value)
    line = server.program.wait_for(r".*TLS 1\.2 or newer.*", since).group(0)
    assert "refused connection from 127.0.0.1:" in line
    assert_each_refused_once(server.program.lines(since), [alice.peer_port or 0], "TLS 1.0/1.1")
    assert_still_serving(server, alice, since)
