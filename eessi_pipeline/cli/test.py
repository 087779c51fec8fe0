"""``eessi-pipeline test --target NAME``: a target's acceptance run outside pytest, gated.

It runs exactly what ``pytest -m arch_<target>`` runs (the target's acceptance tests: the build,
reused when unchanged, its tarball checks and the ReFrame smoke and performance checks) as a
pytest subprocess of the checkout, with the pipeline's state directory for the build, and
``--eessi-gate --eessi-gate-stage``: a run writes, signs and stages the gate record of the tarball
it tested.  It prints the paths of the ReFrame JSON run report, the pytest JUnit file and the gate
record; the pytest output is shown as it runs (on stderr).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any, TextIO

from ..acceptance import TIMEOUT, TestRunFailed, failure_line, run_acceptance
from ..arch.cpuinfo import read_host_cpu
from ..arch.emulation import emulators_for
from ..arch.select import require_build_node
from ..matrix import Target, load_matrix
from ..settings import resolve_settings
from .options import add_json, add_setting, add_stack_version


def cmd_test(args: argparse.Namespace, out: TextIO) -> int:
    settings = resolve_settings(
        version=args.version, state_dir=getattr(args, "state_dir", None), repository=args.repo
    )
    matrix = load_matrix()
    target = matrix.target(args.target)
    host = read_host_cpu(None)
    require_build_node(host, target, matrix, settings.version, emulators_for(host, target))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(args.run_dir) if args.run_dir else settings.state_dir / "runs" / f"{target.name}-{stamp}"
    site = Path(args.site).resolve() if args.site else None
    if args.scheduler == "slurm":  # refuse before building when the checks could not be submitted
        _check_slurm(settings.state_dir, target, site)
    summary = run_acceptance(settings, target, run_dir, stage=not args.no_stage, timeout=args.timeout,
                             scheduler=args.scheduler, site=site)  # fmt: skip
    if args.json:
        out.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    else:
        for key in ("reframe_report", "junit", "gate_record", "html_report"):
            if summary.get(key):
                out.write(f"{summary[key]}\n")
    if summary["returncode"] != 0:
        raise TestRunFailed(failure_line(target, summary))
    return 0


def _check_slurm(state_dir: Path, target: Target, site: Path | None) -> None:
    """The site file's partition for ``target``, or the embedded cluster of the state dir, must exist."""
    if site is not None:
        from ..checks.rfmconfig import load_site, site_partition

        site_partition(load_site(site), target)
        return
    from ..cluster.manager import Cluster

    Cluster(state_dir).require_running()


def add_test_parser(sub: Any) -> None:
    p = sub.add_parser(
        "test", help="run a target's acceptance tests (build, ReFrame) and stage its gated tarball"
    )
    p.add_argument("--target", required=True, metavar="NAME", help="target name or subdir (e.g. zen4)")
    add_stack_version(p)
    add_setting(p, "repository")
    add_setting(p, "state_dir")
    p.add_argument(
        "--run-dir", metavar="DIR", help="where reports go (default: <state>/runs/<target>-<time>)"
    )
    p.add_argument("--no-stage", action="store_true", help="write and sign the gate record, but do not stage")
    p.add_argument("--timeout", type=float, default=TIMEOUT, metavar="S", help="for the whole run")
    p.add_argument("--scheduler", choices=("local", "slurm"), default="local",
                   help="ReFrame checks as local processes (default) or as Slurm jobs on the embedded "
                   "cluster (`eessi-pipeline cluster up`) or --site's partition")  # fmt: skip
    p.add_argument("--site", metavar="FILE", help="with --scheduler slurm: a real cluster's site file")
    add_json(p, "print a JSON summary")
    p.set_defaults(handler=cmd_test)
