# ReFrame declares test attributes as mutable class-level lists and sets; its metaclass copies them per test.
# ruff: noqa: RUF012
"""ReFrame checks of a software layer target (reframe-hpc 4.10.0).

``eessi-pipeline`` (and ``pytest -m arch_<target>``) run these with a generated configuration in
which each partition is one target and has the target's ``modules/all`` on ``MODULEPATH``.
Environment read at load time:

* ``EESSI_PIPELINE_MODULEPATH``: the ``modules/all`` whose modules get a smoke check
  (default: the first entry of ``MODULEPATH``);
* ``EESSI_PIPELINE_TARGET``: the target name the references are looked up for (default: the
  partition's name);
* ``EESSI_PIPELINE_REFERENCES``: the references file (default: ``matrices/references.yaml``);
* ``EESSI_PIPELINE_SMOKE``: the smoke commands per module (default: ``matrices/smoke.yaml``; read
  with ``eessi_pipeline.checks.smoke``, the loader the pipeline validated it with before ReFrame ran).

What the check files share (these paths, the smoke table, references, the base class
``TargetCheck``) is in ``eessi_pipeline/checks/rfmlib.py``.
"""

from __future__ import annotations

from typing import Any

import reframe as rfm
import reframe.utility.sanity as sn
from reframe.core.builtins import parameter, performance_function, run_after, sanity_function, variable

from eessi_pipeline.checks import rfmlib

MODULEPATH, REFERENCES, SMOKE_FILE = rfmlib.check_paths()
SMOKE = rfmlib.smoke_table(SMOKE_FILE)
# scale -> (nodes, cores per node; 0 = all of the node)
SCALES = {"1_core": (1, 1), "2_cores": (1, 2), "1_node": (1, 0), "2_nodes": (2, 0)}


class eessi_check(rfmlib.TargetCheck):
    valid_systems = ["+cpu"]


@rfm.simple_test
class module_smoke_check(eessi_check):
    """The module loads with Lmod and its program runs."""

    module = parameter(rfmlib.installed_modules(MODULEPATH))
    tags = {"smoke"}

    @run_after("init")
    def set_command(self) -> None:
        self.run_smoke(self.module, SMOKE)
        self.reference_key = f"module_smoke_check/{self.module}"

    @sanity_function
    def assert_runs(self) -> Any:
        checks = [sn.assert_found(self.expect, self.stdout)]
        if self.job.exitcode is not None:
            checks.append(sn.assert_eq(self.job.exitcode, 0))
        else:  # ReFrame's squeue scheduler learns no exit code; srun reports a failed task on stderr
            checks.append(sn.assert_not_found(r"srun: error: .*[Ee]xit", self.stderr))
        return sn.all(checks)


@rfm.simple_test
class stream_check(eessi_check):
    """STREAM memory bandwidth (Copy, Scale, Add, Triad) with OpenMP threads per scale."""

    scale = parameter(list(SCALES))
    array_mib = variable(int, value=128)
    modules = ["STREAM"]
    executable = "stream"
    tags = {"performance"}

    @run_after("init")
    def set_scale(self) -> None:
        nodes, _ = SCALES[self.scale]
        if nodes > 1:
            self.valid_systems = ["+cpu +slurm"]
        self.reference_key = f"stream_check/{self.scale}"
        self.descr = f"STREAM at {self.scale}"

    @run_after("setup")
    def set_threads(self) -> None:
        nodes, cores = SCALES[self.scale]
        available = self.current_partition.processor.num_cpus or 1
        self.skip_if(cores > available, f"{self.scale} needs {cores} cores; the partition has {available}")
        if nodes > 1:  # a partition that says how many nodes it has (extras.num_nodes) may have too few
            have = self.current_partition.extras.get("num_nodes") or nodes
            self.skip_if(nodes > have, f"{self.scale} needs {nodes} nodes; the partition has {have}")
            # one line per task's host, so the output shows where the tasks ran
            self.prerun_cmds = ["srun hostname | sort | sed 's/^/task host: /'"]
        threads = cores or available
        self.num_tasks = nodes
        self.num_tasks_per_node = 1
        self.num_cpus_per_task = threads
        self.env_vars = {"OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "close"}
        self.executable_opts = [str(self.array_mib)]
        if not self.emulated:  # under emulation the values are recorded, not judged
            self.reference = {"*": rfmlib.load_references(REFERENCES, self.reference_key, self.target_name())}

    @sanity_function
    def assert_validates(self) -> Any:
        nodes, _ = SCALES[self.scale]
        checks = [sn.assert_found(r"Solution Validates", self.stdout)]
        if nodes > 1:  # every task on a host of its own
            hosts = sorted(set(sn.extractall(r"^task host: (\S+)$", self.stdout, 1).evaluate()))
            checks.append(sn.assert_eq(len(hosts), nodes, msg=f"tasks ran on {hosts}, not on {nodes} hosts"))
        return sn.all(checks)

    def rate(self, kernel: str) -> Any:
        return sn.extractsingle(rf"^{kernel}: (\S+) GB/s$", self.stdout, 1, float)

    @performance_function("GB/s")
    def Copy(self) -> Any:
        return self.rate("Copy")

    @performance_function("GB/s")
    def Scale(self) -> Any:
        return self.rate("Scale")

    @performance_function("GB/s")
    def Add(self) -> Any:
        return self.rate("Add")

    @performance_function("GB/s")
    def Triad(self) -> Any:
        return self.rate("Triad")
