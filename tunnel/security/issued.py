"""The record of issued certificates: which serials a CA directory issued to which name.

Revoking a certificate by its file must revoke the earlier certificates issued to the same
name too: ``certs renew`` keeps the key and changes only the serial, so a client (or a live
session) may still hold the certificate before the renewal, and a CRL listing only the newest
serial would leave that one working. The file is ``issued.txt`` beside the CA, one line per
certificate, ``SERIAL<TAB>KIND<TAB>NAME`` (serial in hex, kind ``client`` or ``server``, the
certificate's common name). The commands that issue append to it; ``certs revoke`` reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunnel.errors import ConfigError
from tunnel.settings.wording import unreadable

ISSUED = "issued.txt"


def record(directory: Path, serial: int, kind: str, name: str) -> None:
    """Note that the CA in ``directory`` issued ``serial`` to ``name`` (a ``kind``)."""
    if serial in serials_for(directory, kind, name):
        return
    # Tabs and newlines would break the line format; names from our commands never hold them.
    clean = " ".join(name.split())
    path = directory / ISSUED
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with os.fdopen(fd, "a", encoding="utf-8") as file:
            file.write(f"{serial:#x}\t{kind}\t{clean}\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def serials_for(directory: Path, kind: str, name: str) -> list[int]:
    """Every serial the record holds for ``name`` as a ``kind``, oldest first."""
    clean = " ".join(name.split())
    path = directory / ISSUED
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise unreadable(path, exc) from None
    serials = []
    for line in text.splitlines():
        fields = line.split("\t", 2)
        if len(fields) == 3 and fields[1] == kind and fields[2] == clean:
            try:
                serials.append(int(fields[0], 16))
            except ValueError:
                continue  # a damaged line names no certificate
    return serials


def forget_all(directory: Path) -> None:
    """Start the record afresh: a new CA has issued nothing yet."""
    (directory / ISSUED).unlink(missing_ok=True)
