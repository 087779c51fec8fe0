"""Performance references of the ReFrame checks, kept as data in ``matrices/references.yaml``.

One entry per check key (class name and scale, ``stream_check/1_core``), target and metric:
``{value, lower, upper, unit}`` with ReFrame's meaning of the bounds (signed fractions of ``value``,
``null`` for unbounded).  Loading validates against ``schemas/references.schema.json`` and against
the matrix's target names; :func:`update_from_report` writes measured values for review in git.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import PipelineError
from ..matrix import PROJECT_ROOT
from ..schema import validate
from ..yamlio import load_yaml

REFERENCES_FILE = PROJECT_ROOT / "matrices" / "references.yaml"
HEADER = (
    "# Performance references of the ReFrame checks (checks/software), per check key, target and metric.\n"
    "# lower/upper are signed fractions of value (ReFrame's thresholds), null = unbounded.\n"
    "# Checked against eessi_pipeline/schemas/references.schema.json on every load; update measured\n"
    "# values with `eessi-pipeline references update --target T --from REPORT` and review the diff.\n"
)


class ChecksError(PipelineError):
    """ReFrame checks could not run, or their references or report are unusable."""


@dataclass(frozen=True, slots=True)
class Reference:
    value: float
    lower: float | None
    upper: float | None
    unit: str

    def bounds(self) -> tuple[float | None, float | None]:
        """Absolute lower and upper bounds (``None``: unbounded)."""
        lo = None if self.lower is None else self.value * (1.0 + self.lower)
        hi = None if self.upper is None else self.value * (1.0 + self.upper)
        return lo, hi

    def as_reframe(self) -> tuple[float, float | None, float | None, str]:
        return (self.value, self.lower, self.upper, self.unit)


@dataclass(frozen=True, slots=True)
class ReferenceEntry:
    check: str
    target: str
    metric: str
    reference: Reference


@dataclass(frozen=True, slots=True)
class References:
    path: Path
    entries: tuple[ReferenceEntry, ...]

    def for_check(self, check: str, target: str) -> dict[str, Reference]:
        return {e.metric: e.reference for e in self.entries if e.check == check and e.target == target}


def parse_references(data: Any, path: Path, targets: Iterable[str] | None = None) -> References:
    """Validate ``data`` (the loaded YAML) and return typed references (pure)."""
    checked = validate(data, "references", path, ChecksError)
    known = set(targets) if targets is not None else None
    entries: list[ReferenceEntry] = []
    problems: list[str] = []
    for check, per_target in checked["checks"].items():
        for target, metrics in per_target.items():
            if known is not None and target not in known:
                problems.append(
                    f"{path}: checks.{check}.{target}: unknown target {target!r}; "
                    f"fix: use one of {', '.join(sorted(known))}"
                )
                continue
            for metric, ref in metrics.items():
                entries.append(
                    ReferenceEntry(
                        check,
                        target,
                        metric,
                        Reference(float(ref["value"]), ref["lower"], ref["upper"], str(ref["unit"])),
                    )
                )
    if problems:
        raise ChecksError("\n".join(problems))
    return References(path, tuple(entries))


def load_references(path: Path | None = None, targets: Iterable[str] | None = None) -> References:
    p = path or REFERENCES_FILE
    return parse_references(load_yaml(p, ChecksError), p, targets)


def measured_values(report: Mapping[str, Any]) -> dict[str, dict[str, tuple[float, str]]]:
    """``check key -> metric -> (value, unit)`` of the passed-or-perf-failed cases of a run report (pure)."""
    runs = report.get("runs") or []
    out: dict[str, dict[str, tuple[float, str]]] = {}
    for case in (runs[-1] if runs else {}).get("testcases", []):
        key = case.get("reference_key")
        measured = case.get("result") == "pass" or case.get("fail_phase") == "performance"
        if not key or not measured:
            continue
        for perfkey, values in (case.get("perfvalues") or {}).items():
            if values and values[0] is not None:
                out.setdefault(str(key), {})[perfkey.rsplit(":", 1)[-1]] = (float(values[0]), str(values[4]))
    return out


def update_from_report(
    data: Mapping[str, Any],
    report: Mapping[str, Any],
    target: str,
    lower: float | None = -0.5,
    upper: float | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """New reference data with the report's measured values for ``target``, and what changed (pure).

    Existing bounds of an entry are kept; new entries get ``lower``/``upper``.
    """
    measured = measured_values(report)
    if not measured:
        raise ChecksError("the report holds no performance values of a check with a reference key")
    new: dict[str, Any] = {"schema_version": 1, "checks": {}}
    for check, per_target in (data.get("checks") or {}).items():
        new["checks"][check] = {t: {m: dict(r) for m, r in ms.items()} for t, ms in per_target.items()}
    changes: list[str] = []
    for check, metrics in sorted(measured.items()):
        slot = new["checks"].setdefault(check, {}).setdefault(target, {})
        for metric, (value, unit) in sorted(metrics.items()):
            old = slot.get(metric)
            entry = {
                "value": round(value, 4),
                "lower": old.get("lower", lower) if old else lower,
                "upper": old.get("upper", upper) if old else upper,
                "unit": unit,
            }
            before = f"{old['value']} {old['unit']}" if old else "none"
            changes.append(f"{check} {target} {metric}: {before} -> {entry['value']} {unit}")
            slot[metric] = entry
    return new, changes


def dump_references(data: Mapping[str, Any]) -> str:
    return HEADER + yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None)


__all__ = [
    "REFERENCES_FILE",
    "ChecksError",
    "Reference",
    "ReferenceEntry",
    "References",
    "dump_references",
    "load_references",
    "measured_values",
    "parse_references",
    "update_from_report",
]
