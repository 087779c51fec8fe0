"""Monitoring policies as pure functions: replication lag and whitelist expiry.

They follow what EESSI's status page and cvmfs-servermon judge: a Stratum 1 one
revision behind is a warning once a grace period after the Stratum 0's publish has
passed, more than one behind is a failure; a whitelist expiring within 48 hours is
a warning, an expired one a failure.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

DEFAULT_GRACE_S = 600
DEFAULT_WHITELIST_WARN_H = 48


class Level(enum.IntEnum):
    OK = 0
    WARNING = 1
    FAILURE = 2


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    level: Level
    message: str


def replication_lag(
    stratum0_revision: int,
    stratum1_revision: int,
    stratum0_published: dt.datetime,
    now: dt.datetime,
    grace_s: int = DEFAULT_GRACE_S,
) -> Finding:
    """Judge how far a Stratum 1 is behind its Stratum 0."""
    behind = stratum0_revision - stratum1_revision
    age = (now - stratum0_published).total_seconds()
    if behind < 0:
        return Finding(
            "replication",
            Level.FAILURE,
            f"Stratum 1 is at revision {stratum1_revision}, ahead of the Stratum 0's {stratum0_revision}: "
            "it replicates another repository or the Stratum 0 was rolled back",
        )
    if behind == 0:
        return Finding(
            "replication", Level.OK, f"Stratum 1 is at the Stratum 0's revision {stratum0_revision}"
        )
    if age < grace_s:
        return Finding("replication", Level.OK,
                       f"Stratum 1 is {behind} revision(s) behind (at {stratum1_revision}, Stratum 0 at "
                       f"{stratum0_revision}), within the {grace_s} s grace period after the publish "
                       f"({age:.0f} s ago)")  # fmt: skip
    level = Level.WARNING if behind == 1 else Level.FAILURE
    return Finding(
        "replication",
        level,
        f"Stratum 1 is {behind} revision(s) behind (at {stratum1_revision}, "
        f"Stratum 0 at {stratum0_revision}) "
        f"{age:.0f} s after the publish; run `eessi-pipeline stratum snapshot`",
    )


def whitelist_expiry(
    expires: dt.datetime, now: dt.datetime, warn_hours: int = DEFAULT_WHITELIST_WARN_H
) -> Finding:
    left = expires - now
    hours = left.total_seconds() / 3600
    if hours <= 0:
        return Finding("whitelist", Level.FAILURE,
                       f"the whitelist expired {-hours:.1f} h ago ({expires:%Y-%m-%d %H:%M} UTC); "
                       "run `eessi-pipeline repo resign`")  # fmt: skip
    if hours < warn_hours:
        return Finding("whitelist", Level.WARNING,
                       f"the whitelist expires in {hours:.1f} h ({expires:%Y-%m-%d %H:%M} UTC), less than "
                       f"{warn_hours} h; run `eessi-pipeline repo resign`")  # fmt: skip
    return Finding("whitelist", Level.OK, f"the whitelist is valid for {hours / 24:.1f} more days")
