"""Acceptance tests run per matrix target: ``pytest -m arch_<target>`` on that target's build node.

Later issues add the build, ReFrame and publish acceptance tests here; the
foundation checks that the node may build the target and that detection leads
hosts of that target to it.
"""

from __future__ import annotations

import archspec.cpu

from eessi_pipeline.arch.cpuinfo import HostCpu
from eessi_pipeline.arch.select import Verdict, select_target
from eessi_pipeline.matrix import Matrix, Target
from eessi_pipeline.plan import make_plan
from eessi_pipeline.settings import DEFAULT_REPOSITORY


def test_target_build_node_runs_target(
    build_node: Verdict, arch_target: Target, host_cpu: HostCpu, eessi_matrix: Matrix, eessi_version: str
) -> None:
    assert build_node.ok
    if build_node.emulated_by:  # another family's generic target, under registered emulation
        assert arch_target.is_generic and arch_target.family != host_cpu.family
        return
    sel = select_target(host_cpu, eessi_matrix, eessi_version)
    assert arch_target.subdir in sel.candidates


def test_target_host_with_its_features_is_led_to_it(
    arch_target: Target, eessi_matrix: Matrix, eessi_version: str
) -> None:
    uarch = archspec.cpu.TARGETS[arch_target.archspec]
    vendor = uarch.vendor if uarch.vendor != "generic" else "GenuineIntel"
    host = HostCpu(
        arch_target.family, vendor, frozenset(uarch.features), model_name=f"ideal {arch_target.name}"
    )
    sel = select_target(host, eessi_matrix, eessi_version)
    assert sel.target == arch_target


def test_target_plan_installs_under_its_subdir(
    arch_target: Target, eessi_matrix: Matrix, eessi_version: str
) -> None:
    plan = make_plan(eessi_matrix, arch_target, eessi_version, DEFAULT_REPOSITORY)
    assert plan.install_prefix == (
        f"/cvmfs/{DEFAULT_REPOSITORY}/versions/{eessi_version}/software/linux/{arch_target.subdir}"
    )
    assert plan.steps[0].available  # the target is part of this stack version
    assert any(s.command == f"pytest -m {arch_target.marker}" for s in plan.steps)
