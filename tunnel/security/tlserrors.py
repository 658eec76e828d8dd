"""A failed TLS handshake in one line a person can act on.

OpenSSL's own words (``CERTIFICATE_VERIFY_FAILED``, ``WRONG_VERSION_NUMBER``) name the check
that failed, not what to do: :func:`describe_tls_error` turns them into what the operator
changes (a certificate for the other role, the CA, the CRL, TLS on both sides). It reads the
exception only, so the asyncio adapter describes its failures without loading the certificate
code (``cryptography``) that the rest of this folder needs.
"""

from __future__ import annotations

# What to do about an expired CRL: said on a handshake refused for it, by a reload's trust
# check (tunnel.security.trust) and at start (tunnel.security.tls).
CRL_REFRESH = (
    "re-sign it with `ambassador-server certs revoke SERIAL --dir CA_DIR` (any serial it "
    "lists; --days sets how long it lasts), then reload"
)


def describe_tls_error(exc: BaseException, *, server_side: bool = False) -> str:
    """A handshake failure in words a person can act on; ``server_side``: we are the server."""
    text = str(exc)
    reason = getattr(exc, "reason", None) or ""
    verify = getattr(exc, "verify_message", None)
    if verify:
        if "CRL has expired" in verify:
            return (
                "the server's CRL has expired, so it refuses every certificate of its CA "
                f"({verify}); {CRL_REFRESH}"
            )
        if "expired" in verify:
            return f"the peer's certificate has expired ({verify})"
        if "not yet valid" in verify:
            return f"the peer's certificate is not yet valid ({verify})"
        if "Hostname mismatch" in verify or "IP address mismatch" in verify:
            return (
                f"the server's certificate does not name this host ({verify}); "
                "use --server-name or reissue it with the right --san"
            )
        if (
            "unable to get local issuer" in verify
            or "self-signed" in verify
            or "self signed" in verify
        ):
            return f"the peer's certificate is not signed by the trusted CA ({verify})"
        if "revoked" in verify:
            return f"the peer's certificate has been revoked ({verify})"
        if "certificate purpose" in verify:  # "unsuitable" in OpenSSL 3, "unsupported" before
            # The extended key usage leaves out the peer's role: most often a server
            # certificate given to a client as --tls-cert.
            if server_side:
                return (
                    "the client's certificate is not made for a client (its extended key "
                    "usage leaves out clientAuth: a server certificate?); give the client one "
                    "from 'ambassador-server certs client NAME'"
                )
            return (
                "the server's certificate is not made for a server (its extended key usage "
                "leaves out serverAuth); give the server one from 'ambassador-server certs init'"
            )
        return f"certificate verification failed: {verify}"
    not_tls = ("WRONG_VERSION_NUMBER", "UNEXPECTED_MESSAGE", "RECORD_LAYER_FAILURE",
               "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_RECORD")  # fmt: skip
    if any(code in reason for code in not_tls) or "wrong version number" in text:
        return "the peer does not speak TLS (a plaintext ambassador, or another service?)"
    if "UNSUPPORTED_PROTOCOL" in reason or "unsupported protocol" in text:
        return "the peer offered only TLS 1.0/1.1; TLS 1.2 or newer is required"
    if "TLSV1_ALERT_PROTOCOL_VERSION" in reason:
        return "the peer refused our TLS version; TLS 1.2 or newer is required on both sides"
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason or "CERTIFICATE_REQUIRED" in reason:
        return (
            "no client certificate was presented; this server requires one (--tls-cert/--tls-key)"
        )
    if "TLSV1_ALERT_UNKNOWN_CA" in reason or "UNKNOWN_CA" in reason:
        return "the peer does not trust our certificate's CA"
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        return "the peer's certificate could not be verified"
    if "SSLV3_ALERT_CERTIFICATE_EXPIRED" in reason:
        return "the peer says our certificate has expired"
    if "SSLV3_ALERT_CERTIFICATE_REVOKED" in reason:
        return "the peer says our certificate has been revoked"
    if "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE" in reason:
        return (
            "the peer refused our certificate as not made for our role (extended key usage); "
            + (
                "use a server certificate ('ambassador-server certs init')"
                if server_side
                else "use a client certificate ('ambassador-server certs client NAME')"
            )
        )
    if "SSLV3_ALERT_BAD_CERTIFICATE" in reason:
        return "the peer rejected our certificate"
    if "HTTP_REQUEST" in reason:
        return "the peer spoke HTTP, not TLS"
    return f"TLS handshake failed: {reason or text}"
