"""What the ReFrame check files under ``checks/`` share (they import it; it needs only PyYAML).

``installed_modules`` lists the modules a smoke check is made for; ``load_references`` reads one
check's reference values for one target from ``matrices/references.yaml`` in ReFrame's form.
"""

from __future__ import annotations

import os
from typing import Any

import yaml


def installed_modules(modulepath: str) -> list[str]:
    """``name/version`` of every Lua module file under ``modulepath``."""
    found = []
    if os.path.isdir(modulepath):
        for name in sorted(os.listdir(modulepath)):
            d = os.path.join(modulepath, name)
            if os.path.isdir(d):
                found += [f"{name}/{f[:-4]}" for f in sorted(os.listdir(d)) if f.endswith(".lua")]
    return found


def load_references(path: str, check: str, target: str) -> dict[str, Any]:
    """``{metric: (value, lower, upper, unit)}`` of ``check`` for ``target``; {} when there are none."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError:
        return {}
    metrics = ((data.get("checks") or {}).get(check) or {}).get(target) or {}
    return {m: (r["value"], r.get("lower"), r.get("upper"), r["unit"]) for m, r in metrics.items()}
