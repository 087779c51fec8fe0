"""Builds as batch jobs, the way EESSI's build bot dispatches them to a cluster.

``eessi-pipeline build --target T --scheduler slurm`` writes a job script that runs the same build
command with ``--scheduler local`` on the node the job lands on (the build's own mount namespace and
overlay are set up there, inside the job), submits it with ``sbatch --wait`` and waits.  The job's
output is the build's ``--json`` summary; its log (stderr) is kept beside it under
``<state>/build/jobs/`` and quoted when the job fails.  The state directory, the checkout and its
virtual environment must be visible at the same paths on the nodes: true for the embedded cluster, and
what a real cluster's shared file system has to provide.

The script and the ``sbatch`` command line are pure functions (:func:`job_script`, :func:`sbatch_argv`).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import proc
from ..errors import ClusterError

BUILD_JOB_TIMEOUT = 4 * 3600.0
JOB_ID = re.compile(r"^(\d+)(?:;\S+)?$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class BuildJob:
    """One build submitted as a batch job."""

    name: str
    script: Path
    output: Path  # the build's stdout: its JSON summary
    log: Path  # the build's stderr
    workdir: Path
    access: tuple[str, ...]  # sbatch options that reach the partition
    cpus: int
    time_limit: str = "4:00:00"


def job_script(python: str, workdir: Path, build_argv: Sequence[str]) -> str:
    """The batch script: run the build where the job lands (pure)."""
    command = shlex.join([python, "-m", "eessi_pipeline.cli", *build_argv])
    return (
        "#!/bin/bash\n"
        "# Written by eessi-pipeline: a software-layer build as a batch job.\n"
        "set -euo pipefail\n"
        'echo "[build job] ${SLURM_JOB_ID:-?} on $(hostname) (${SLURMD_NODENAME:-?})" >&2\n'
        f"cd {shlex.quote(str(workdir))}\n"
        f"exec {command}\n"
    )


def sbatch_argv(job: BuildJob) -> list[str]:
    """``sbatch --wait`` for the job (pure): one node, the build's CPUs, its own output files."""
    return [
        "sbatch", "--parsable", "--wait", "--no-requeue", f"--job-name={job.name}", "--nodes=1", "--ntasks=1",
        f"--cpus-per-task={job.cpus}", f"--time={job.time_limit}", f"--chdir={job.workdir}",
        f"--output={job.output}", f"--error={job.log}", *job.access, str(job.script),
    ]  # fmt: skip


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(empty log)"


@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: str
    summary: dict[str, Any]
    output: Path
    log: Path


def submit_build(
    job: BuildJob,
    script_text: str,
    *,
    client_prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = BUILD_JOB_TIMEOUT,
) -> JobResult:
    """Write the script, submit it, wait for the job; its JSON summary, or an error quoting its log."""
    job.script.parent.mkdir(parents=True, exist_ok=True)
    job.script.write_text(script_text, encoding="utf-8")
    job.script.chmod(0o755)
    for f in (job.output, job.log):
        f.unlink(missing_ok=True)
    try:
        done = proc.run([*client_prefix, *sbatch_argv(job)], timeout=timeout, env=env, check=False)
    except proc.CommandFailed as e:
        raise ClusterError(f"the build job could not be submitted or did not end: {e}") from e
    found = JOB_ID.search(done.stdout)
    job_id = found.group(1) if found else "?"
    if done.returncode != 0:
        why = done.tail(5) if job_id == "?" else f"job {job_id} exited {done.returncode}"
        raise ClusterError(
            f"the build job failed ({why}); its log {job.log}:\n{_tail(job.log)}\n"
            f"fix what the log says (or run the build locally: --scheduler local) and submit it again"
        )
    try:
        summary = json.loads(job.output.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ClusterError(
            f"build job {job_id} ended but left no JSON summary in {job.output} ({e}); its log {job.log}:\n"
            f"{_tail(job.log)}"
        ) from e
    if not isinstance(summary, dict) or not summary.get("tarball"):
        raise ClusterError(f"build job {job_id}: {job.output} names no tarball; see {job.log}")
    return JobResult(job_id, summary, job.output, job.log)


__all__ = ["BuildJob", "JobResult", "job_script", "sbatch_argv", "submit_build"]
