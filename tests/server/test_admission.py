"""The bounds on connections that have not authenticated, and the budget of their log lines."""

from __future__ import annotations

import logging

import pytest

from server.admission import Admission, AdmissionLimits, address_key
from tunnel.operations.loglimit import LogBudget


def test_an_ipv6_peer_counts_by_its_64_and_a_mapped_ipv4_by_its_address() -> None:
    assert address_key(("2001:db8:1:2:aaaa::1", 1, 0, 0)) == address_key(("2001:db8:1:2::9", 2))
    assert address_key(("2001:db8:1:2::1", 1)) != address_key(("2001:db8:1:3::1", 1))
    assert address_key(("::ffff:10.0.0.1", 5)) == address_key(("10.0.0.1", 6)) == "10.0.0.1"


def test_admission_counts_until_released() -> None:
    limits = AdmissionLimits(unauthenticated=3, unauthenticated_per_address=2)
    admission = Admission()
    assert admission.admit("a", limits) is None
    assert admission.admit("a", limits) is None
    assert admission.admit("a", limits) == "max_unauthenticated_per_address"
    assert admission.admit("b", limits) is None
    assert admission.admit("c", limits) == "max_unauthenticated"
    admission.release("a")
    assert admission.admit("c", limits) is None
    for key in ("a", "b", "c"):
        admission.release(key)
    assert admission.count == 0


def test_the_log_budget_drops_lines_past_its_burst_and_says_how_many(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    budget = LogBudget(logging.getLogger("test.budget"), rate=1.0, burst=5, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.budget"):
        for i in range(100):
            budget.warning("line %d", i)
        now[0] += 1.0
        budget.warning("later")
    assert [r.getMessage() for r in caplog.records] == [
        *(f"line {i}" for i in range(5)),
        "later (and 95 more such lines, not logged)",
    ]
