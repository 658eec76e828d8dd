"""Which client identity may reach which service.

A client's identity is the name on its certificate (mutual TLS) or the name of its token; a
client with neither is ``anonymous``. With no rules at all, every client reaches every service
(the seed's behaviour). Once any rule exists, a client reaches only what a rule grants to its
identity or to ``*`` (everyone). The same check decides the catalog a client is shown and runs
again on every stream open, so a rule withdrawn by a reload takes effect at once.

Rules are written ``IDENTITY=SERVICE[,SERVICE...]`` (``--access alice=redis,db``), or in the
config file as a table: ``[access]`` / ``alice = "redis, db"``. ``*`` as a service grants all.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tunnel.settings.links import Catalog, LinkError, Service

ANONYMOUS = "anonymous"
EVERYONE = "*"
_IDENTITY = re.compile(r"[^\s=,]{1,255}")


@dataclass(frozen=True, slots=True)
class AccessRules:
    grants: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (identity, service references)

    @property
    def enabled(self) -> bool:
        return bool(self.grants)

    def allows(self, identity: str, service: Service) -> bool:
        if not self.grants:
            return True
        for who, refs in self.grants:
            if who in (EVERYONE, identity) and any(
                ref == EVERYONE or service.matches(ref) for ref in refs
            ):
                return True
        return False

    def visible(self, identity: str, catalog: Catalog) -> Catalog:
        """The part of ``catalog`` this identity may reach: all it is ever shown."""
        return Catalog(tuple(s for s in catalog if self.allows(identity, s)))


def unmatched(rules: AccessRules, catalog: Catalog) -> list[str]:
    """One warning for each service a rule names that the catalog does not hold.

    Such a rule is legal (the service may be linked later) but usually a typo, which would
    otherwise show only as a client told that the server does not offer what it asks for.
    """
    names = sorted(
        {n for s in catalog for n in (s.alias, s.full_name, s.port and f"{s.port}") if n}
    )
    warnings = []
    for who, refs in rules.grants:
        for ref in refs:
            if ref == EVERYONE or any(service.matches(ref) for service in catalog):
                continue
            near = difflib.get_close_matches(ref, names, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"offered: {', '.join(names)}"
            warnings.append(f"access rule {who}={ref} names no service this server offers; {hint}")
    return warnings


def parse_access(texts: Iterable[str]) -> AccessRules:
    """Rules from ``IDENTITY=SERVICE[,SERVICE...]`` texts; raises LinkError."""
    grants: dict[str, list[str]] = {}
    for text in texts:
        who, equals, services = text.partition("=")
        who = who.strip()
        refs = [ref.strip().lower() for ref in services.split(",") if ref.strip()]
        if not equals or not _IDENTITY.fullmatch(who) or not refs:
            raise LinkError(
                f"bad access rule {text!r}: use IDENTITY=SERVICE[,SERVICE...], "
                "for example alice=redis,db or *=public"
            )
        grants.setdefault(who, []).extend(refs)
    return AccessRules(tuple((who, tuple(refs)) for who, refs in grants.items()))
