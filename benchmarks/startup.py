"""Start-up cost of the command line against what the same interpreter needs for archspec alone.

Side by side, interleaved in one run (so a busy machine slows all of them alike):

* baseline: ``python -c "import archspec.cpu; archspec.cpu.host()"`` — the least any detector
  written in Python on archspec can cost;
* ``eessi-pipeline detect`` (the console script of the same interpreter);
* ``eessi-pipeline --help``;
* ``eessi-pipeline detect`` with ``EESSI_PIPELINE_NO_CACHE=1`` (the matrix parsed and checked
  against its schema every time), for scale.

Aim (issue "first hour"): ``detect`` and ``--help`` at most 2x the baseline (median).  Prints a
table and writes ``benchmarks/results/startup.json``.  ``python benchmarks/startup.py --runs 30``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AIM = 2.0


def _commands() -> dict[str, tuple[list[str], dict[str, str]]]:
    bindir = Path(sys.executable).parent
    cli = str(bindir / "eessi-pipeline")
    env = dict(os.environ)
    nocache = {**env, "EESSI_PIPELINE_NO_CACHE": "1"}
    return {
        "baseline: import archspec + host()": (
            [sys.executable, "-c", "import archspec.cpu; archspec.cpu.host()"],
            env,
        ),
        "eessi-pipeline detect": ([cli, "detect"], env),
        "eessi-pipeline --help": ([cli, "--help"], env),
        "eessi-pipeline detect (no cache)": ([cli, "detect"], nocache),
    }


def _once(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one run.  ``Popen.wait()`` without a timeout blocks in waitpid: with a timeout,
    Python polls with sleeps of up to 50 ms, which would round every figure up to the next 50 ms."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        code = proc.wait()
    finally:
        watchdog.cancel()
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"startup: {' '.join(argv)} exited {code}")
    return elapsed


def measure(runs: int) -> dict[str, list[float]]:
    commands = _commands()
    for argv, env in commands.values():  # warm the page cache and the validated-matrix cache
        _once(argv, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, (argv, env) in commands.items():
            times[name].append(_once(argv, env))
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = ap.parse_args(argv)
    times = measure(args.runs)
    base = statistics.median(times["baseline: import archspec + host()"])
    rows: list[dict[str, Any]] = []
    print(f"{'command':<40} {'min ms':>8} {'median ms':>10} {'max ms':>8} {'x baseline':>11}")
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = med / base
        rows.append({"command": name, "min_s": min(ts), "median_s": med, "max_s": max(ts), "ratio": ratio})
        print(f"{name:<40} {min(ts) * 1e3:8.1f} {med * 1e3:10.1f} {max(ts) * 1e3:8.1f} {ratio:11.2f}")
    judged = [r for r in rows if r["command"] in ("eessi-pipeline detect", "eessi-pipeline --help")]
    ok = all(r["ratio"] <= AIM for r in judged)
    print(f"aim: detect and --help at most {AIM}x the baseline (median): {'met' if ok else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": args.runs,
        "aim_ratio": AIM,
        "aim_met": ok,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
