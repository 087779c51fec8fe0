"""What the ReFrame check files under ``checks/software`` and ``checks/gpu`` share (they import it).

* where a check file finds its inputs (read from the environment when the file loads: the runner
  sets ``EESSI_PIPELINE_MODULEPATH``, ``EESSI_PIPELINE_REFERENCES``, ``EESSI_PIPELINE_SMOKE``);
* ``installed_modules`` lists the modules a smoke check is made for; ``smoke_table`` reads the smoke
  commands with the strict loader of :mod:`eessi_pipeline.checks.smoke`; ``load_references`` reads
  one check's reference values for one target from ``matrices/references.yaml`` in ReFrame's form;
* :class:`TargetCheck`, the base of every check of a target: the target's name (for references),
  the key its references are read under, and the set-up of a module's smoke run.  It carries no
  ``@rfm.simple_test``: only the check files' leaf classes are registered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import reframe as rfm
import yaml
from reframe.core.builtins import variable

from ..matrix import PROJECT_ROOT
from .smoke import SMOKE_ENV, SMOKE_FILE, SmokeTable, load_smoke


def check_paths() -> tuple[str, str, str]:
    """``(modulepath, references file, smoke file)`` of a check file, from the environment: the
    ``modules/all`` whose modules get a smoke check (default: the first entry of ``MODULEPATH``), and
    the project's ``matrices/references.yaml`` and ``matrices/smoke.yaml`` unless told otherwise."""
    modulepath = os.environ.get("EESSI_PIPELINE_MODULEPATH") or os.environ.get("MODULEPATH", "").split(":")[0]
    references = os.environ.get("EESSI_PIPELINE_REFERENCES") or str(
        PROJECT_ROOT / "matrices" / "references.yaml"
    )
    return modulepath, references, os.environ.get(SMOKE_ENV) or str(SMOKE_FILE)


def smoke_table(path: str) -> SmokeTable:
    """The smoke commands per module, validated (the pipeline checked the same file before ReFrame ran)."""
    return load_smoke(Path(path))


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


def sh_quote(text: str) -> str:
    """``text`` as one single-quoted bash word."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


class TargetCheck(rfm.RunOnlyRegressionTest):
    """A run-only check of one target: it runs anywhere the leaf's ``valid_systems`` allow, within
    five minutes; ``target`` (default ``EESSI_PIPELINE_TARGET``, else the partition's name) names
    the references it is held to, under ``reference_key``."""

    valid_prog_environs = ["*"]  # noqa: RUF012 (ReFrame copies class-level lists per test)
    time_limit = "5m"
    target = variable(str, value=os.environ.get("EESSI_PIPELINE_TARGET", ""))
    reference_key = variable(str, value="")
    # the emulator the target's programs run under (``$EESSI_PIPELINE_EMULATED``, e.g. "qemu-aarch64
    # 7.2"): performance is recorded, never held to a reference (emulation says nothing about speed)
    emulated = variable(str, value=os.environ.get("EESSI_PIPELINE_EMULATED", ""))

    def target_name(self) -> Any:
        return self.target or self.current_partition.name

    def run_smoke(self, module: str, table: SmokeTable) -> None:
        """Load ``module`` and run its smoke command from ``table`` in bash; the output must match
        the entry's ``expect``, kept as ``self.expect`` for the leaf's sanity function."""
        smoke = table.check_for(module.split("/", 1)[0])
        self.expect = smoke.expect
        self.descr = f"smoke: {module} loads; {smoke.description}"
        self.modules = [module]
        self.executable = "bash"
        self.executable_opts = ["-c", sh_quote(smoke.command)]
