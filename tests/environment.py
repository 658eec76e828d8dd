"""What a test needs from the machine: a program, a capability, a document section.

Locally a test whose program or capability is missing is skipped, with the package to install.
Under CI (``CI=true``) the same test fails instead, naming what is missing: .ci/run installs
every program the suite needs (redis-server, redis-tools, iperf3, iproute2, socat, procps,
golang-go, golang-github-hashicorp-yamux-dev, chromium, docker.io, haproxy, nginx-light,
postgresql, dnsmasq-base, bind9-dnsutils, tinyproxy, dante-server, prometheus) and runs as root,
so a skip there is coverage lost without anyone noticing.

Skips that describe the platform rather than a missing piece stay plain ``pytest.skip``: a
kernel without PR_SET_MDWE, a one-CPU machine, a port another program holds, no Linux /proc,
an OpenSSL built without TLS 1.1, and the programs .ci/run does not install (openssl,
systemd-analyze), which a fresh CI machine may lack.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(what: str) -> NoReturn:
    """Skip the test because ``what`` is missing, or, under CI, fail saying so."""
    if under_ci():
        pytest.fail(f"CI must provide this and does not: {what}", pytrace=False)
    pytest.skip(what)
