"""pytest options choosing where the ReFrame checks of the software layer run.

``--eessi-scheduler local`` (default): processes on this host.  ``--eessi-scheduler slurm``: every case
is a Slurm job, on the partition of ``--eessi-site FILE`` that tests the target, or, without a site file,
on the embedded cluster of ``--eessi-cluster DIR`` (default: the build state directory, so that
``eessi-pipeline test --scheduler slurm`` uses the cluster ``eessi-pipeline cluster up`` started).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..errors import PipelineError
from ..matrix import Target
from ..software.fixtures import build_state_dir
from .scheduler import SCHEDULERS, SlurmRun, slurm_run

SCHEDULER_OPTION = "--eessi-scheduler"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eessi-pipeline")
    group.addoption(
        SCHEDULER_OPTION,
        choices=SCHEDULERS,
        default="local",
        help="where ReFrame runs the software checks: local processes (default) or Slurm jobs",
    )
    group.addoption(
        "--eessi-site",
        metavar="FILE",
        help="with --eessi-scheduler slurm: a site file naming the cluster's partitions "
        "(default: the embedded cluster)",
    )
    group.addoption(
        "--eessi-cluster",
        metavar="DIR",
        help="state directory of the embedded cluster (default: the build state directory)",
    )


def scheduler_of(config: pytest.Config) -> str:
    return str(config.getoption(SCHEDULER_OPTION) or "local")


def cluster_state_dir(config: pytest.Config) -> Path:
    chosen = config.getoption("--eessi-cluster")
    return Path(chosen) if chosen else build_state_dir(config)


@pytest.fixture(scope="session")
def checks_slurm(pytestconfig: pytest.Config) -> object:
    """Factory ``checks_slurm(target)``: the :class:`SlurmRun` for the target, or None when local.
    A cluster that is not up fails the test with the command that starts it."""

    def get(target: Target) -> SlurmRun | None:
        if scheduler_of(pytestconfig) != "slurm":
            return None
        site = pytestconfig.getoption("--eessi-site")
        try:
            return slurm_run(cluster_state_dir(pytestconfig), [target], Path(site) if site else None)
        except PipelineError as e:
            pytest.fail(str(e), pytrace=False)

    return get
