"""After a reload, would each live session still be admitted? The ones that would not are closed.

A session proved who it is once, at its handshake: a client certificate checked against the CA
and CRL of that moment, a token checked against the token file of that moment, or nothing at
all when neither was asked for. A reload that adds a token file, rotates a secret, replaces the
CA or revokes a certificate must not leave such a session running on credentials the new
configuration refuses; the client reconnects and is judged by the new rules like any newcomer.

Each session is judged as a new connection presenting the same credentials would be:

* under mutual TLS (``--tls-ca``), its certificate must verify against the new CA bundle and
  CRL (:mod:`tunnel.security.trust`); a session that presented none (mutual TLS was just turned on)
  is out;
* a certificate is no longer an identity once mutual TLS is off, so such a session is out too;
* with a token file, a token session's name must still be there with the same secret (the
  session kept a fingerprint of the secret it proved, :func:`tunnel.security.auth.fingerprint`); a
  session with neither token nor certificate name is out, as its hello would be refused now;
* a token session is out when the token file is gone (its identity would be another now).

Access rules are checked afterwards, as before, by sending each remaining session its catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from tunnel.security import auth
from tunnel.security.trust import Trust, Untrusted, load_trust

if TYPE_CHECKING:
    from server.config import ServerConfig
    from server.connection import ServerConnection


@dataclass(frozen=True)
class AdmissionPolicy:
    """What a configuration admits: its tokens and the trust behind its client certificates."""

    tokens: Mapping[str, bytes] | None
    trust: Trust | None  # None: client certificates are not asked for
    now: datetime

    @classmethod
    def of(
        cls, config: ServerConfig, tokens: Mapping[str, bytes] | None, now: datetime
    ) -> AdmissionPolicy:
        tls = config.tls
        trust = load_trust(tls.ca, tls.crl) if tls is not None and tls.ca is not None else None
        return cls(tokens, trust, now)

    def refuses(self, connection: ServerConnection) -> Untrusted | None:
        """Why ``connection`` would not be admitted now, or None if it would."""
        if self.trust is not None:
            if connection.peer_cert is None:
                if connection.tls_done:
                    return Untrusted("certificate_required",
                                     "this server now requires a client certificate")  # fmt: skip
            else:
                refused = self.trust.check(connection.peer_cert, self.now)
                if refused is not None:
                    return refused
        elif connection.cert_name is not None:
            return Untrusted("certificate_not_checked", "client certificates are no longer "
                             "checked here, so its identity would be another now")  # fmt: skip
        return self._token_refuses(connection)

    def _token_refuses(self, connection: ServerConnection) -> Untrusted | None:
        tokens, name = self.tokens, connection.token_name
        if name is not None:
            if tokens is None:
                return Untrusted("token_not_checked", "tokens are no longer checked here, so "
                                 "its identity would be another now")  # fmt: skip
            secret = tokens.get(name)
            if secret is None:
                return Untrusted("token_withdrawn", "its token was withdrawn")
            if auth.fingerprint(secret) != connection.token_fingerprint:
                return Untrusted("token_changed", "its token's secret was changed")
        elif tokens is not None and connection.cert_name is None and connection.welcomed:
            return Untrusted("token_required", "this server now requires a token or a client "
                             "certificate, and it has neither")  # fmt: skip
        return None
