"""Channel binding: what ties a token proof to the TLS connection it was made on.

A token proof alone shows that whoever answered the challenge knows the secret; it does not show
that the answer was made on *this* connection. A man in the middle who terminates TLS with a
certificate the client trusts can pass the server's challenge to the client and the client's
proof back to the server, and keep the authenticated session. Mixing a value that differs
between the two TLS connections into both proofs ends that: the client's proof is made for the
relay's connection and does not match on the server's.

The value is RFC 5929 ``tls-server-end-point``, as PostgreSQL's SCRAM-SHA-256-PLUS uses it: a
hash of the server's certificate (DER), which the client has from the handshake and the server
from its own ``--tls-cert``. The better bindings are out of reach: RFC 9266 ``tls-exporter``
needs a keying-material exporter that Python's ``ssl`` lacks, and ``tls-unique`` is undefined
for TLS 1.3. The hash function follows RFC 5929 section 4.1: the one the certificate's
signature uses, but SHA-256 if that is MD5 or SHA-1. For signatures that name no separate hash
(Ed25519, Ed448) the RFC leaves the binding undefined; both ends here use SHA-256 for them.

Over plaintext there is no channel to bind to: the binding is empty (:data:`UNBOUND`).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

PREFIX = b"tls-server-end-point:"  # the channel-binding type, as RFC 5056 names them
UNBOUND = b""


def end_point_hash_algorithm(cert: x509.Certificate) -> hashes.HashAlgorithm:
    """The hash RFC 5929 section 4.1 picks for ``cert``."""
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None  # a signature this library does not know: both ends agree on SHA-256
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        return hashes.SHA256()
    return algorithm


def end_point_hash(certificate_der: bytes) -> bytes:
    """The RFC 5929 ``tls-server-end-point`` hash of a DER certificate."""
    cert = x509.load_der_x509_certificate(certificate_der)
    digest = hashes.Hash(end_point_hash_algorithm(cert))
    digest.update(certificate_der)
    return digest.finalize()


def server_end_point(certificate_der: bytes | None) -> bytes:
    """The binding of a TLS connection whose server presented ``certificate_der``."""
    if not certificate_der:
        return UNBOUND
    return PREFIX + end_point_hash(certificate_der)


def server_end_point_of_chain(chain_pem: bytes) -> bytes:
    """The binding a server makes with this PEM chain: its first certificate is the one sent."""
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    return server_end_point(leaf.public_bytes(Encoding.DER))
