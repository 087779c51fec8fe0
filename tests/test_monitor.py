"""Monitoring policies: replication lag (EESSI status page) and whitelist expiry (cvmfs-servermon)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eessi_pipeline.monitor import Level, replication_lag, whitelist_expiry

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("s0", "s1", "age_s", "level"),
    [
        (5, 5, 10_000, Level.OK),
        (5, 4, 100, Level.OK),
        (5, 3, 100, Level.OK),
        (5, 4, 601, Level.WARNING),
        (5, 3, 601, Level.FAILURE),
        (5, 6, 0, Level.FAILURE),
    ],
    ids=["same", "one-behind-in-grace", "two-behind-in-grace", "one-behind-late", "two-behind-late", "ahead"],
)
def test_replication_lag_levels(s0: int, s1: int, age_s: int, level: Level) -> None:
    finding = replication_lag(s0, s1, NOW - dt.timedelta(seconds=age_s), NOW)
    assert finding.level is level
    assert str(s0) in finding.message


@given(s0=st.integers(1, 10_000), lag=st.integers(0, 50), age=st.integers(0, 100_000))
def test_replication_lag_more_behind_is_never_better(s0: int, lag: int, age: int) -> None:
    published = NOW - dt.timedelta(seconds=age)
    a = replication_lag(s0 + lag, s0, published, NOW)
    b = replication_lag(s0 + lag + 1, s0, published, NOW)
    assert b.level >= a.level


@pytest.mark.parametrize(
    ("hours", "level"),
    [(24 * 30, Level.OK), (48.5, Level.OK), (47, Level.WARNING), (1, Level.WARNING), (-1, Level.FAILURE)],
    ids=["month", "just-over-48h", "under-48h", "one-hour", "expired"],
)
def test_whitelist_expiry_levels(hours: float, level: Level) -> None:
    finding = whitelist_expiry(NOW + dt.timedelta(hours=hours), NOW)
    assert finding.level is level
    if level is not Level.OK:
        assert "repo resign" in finding.message
