"""Another CPU family's stack (aarch64 on an x86_64 host): the layer's compiler and Python, the family's
own easyconfigs and wheel, and emulated performance recorded without being judged.  The real build
under qemu is tests/acceptance (``pytest -m arch_aarch64_generic``)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from helpers import build_cli_parser

from eessi_pipeline.arch.cpuinfo import read_host_cpu
from eessi_pipeline.arch.emulation import emulators_for
from eessi_pipeline.checks.htmlreport import case_row
from eessi_pipeline.checks.report import parse_report
from eessi_pipeline.checks.rfmconfig import TargetPrefix, config
from eessi_pipeline.checks.runner import EMULATED_ENV, reframe_env
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.software.driver import BuildPlan, build_inputs
from eessi_pipeline.software.layertools import (
    layer_compiles,
    layer_environment,
    wrapper_texts,
    write_wrappers,
)
from eessi_pipeline.software.sources import pip_download_argv, plan_sources
from eessi_pipeline.software.stacks import load_stacks

LAYER = "/cvmfs/r.eessi.local/versions/2023.06/compat/linux/aarch64"
ARM_WHEEL = "numpy-1.25.1-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
X86_WHEEL = "numpy-1.25.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"


def test_only_another_family_compiles_with_the_layer():
    assert layer_compiles("aarch64", "x86_64")
    assert not layer_compiles("x86_64", "x86_64")
    assert not layer_compiles("aarch64", "aarch64")


def test_wrappers_run_the_layer_gcc_with_the_layer_as_sysroot_and_its_python(tmp_path):
    texts = wrapper_texts(LAYER)
    assert set(texts) == {"gcc", "cc", "python"}
    assert texts["gcc"] == texts["cc"]
    assert f'exec {LAYER}/usr/bin/gcc --sysroot={LAYER} "$@"' in texts["gcc"]
    assert f'exec {LAYER}/usr/bin/python3 "$@"' in texts["python"]
    written = write_wrappers(tmp_path / "tools", LAYER)
    for name, text in texts.items():
        path = written / name
        assert path.read_text(encoding="utf-8") == text and os.access(path, os.X_OK)


def test_layer_environment_puts_wrappers_then_layer_bins_first_and_sets_qemu_prefix(tmp_path):
    base = {"PATH": f"/venv/bin:/usr/bin:{LAYER}/usr/bin:/bin", "HOME": "/root"}
    env = layer_environment(base, LAYER, tmp_path)
    assert env["PATH"].split(":") == [
        str(tmp_path), f"{LAYER}/usr/bin", f"{LAYER}/bin", "/venv/bin", "/usr/bin", "/bin"
    ]  # fmt: skip
    assert env["QEMU_LD_PREFIX"] == LAYER and env["HOME"] == "/root"
    assert base["PATH"].startswith("/venv/bin")  # the base is not changed


def test_aarch64_targets_get_the_family_easyconfig_with_the_arm_wheel():
    stacks, matrix = load_stacks(), load_matrix()
    arm = stacks.stack_for("2023.06", matrix.target("aarch64_generic"))
    x86 = stacks.stack_for("2023.06", matrix.target("x86_64_generic"))
    assert arm.modules == x86.modules  # same modules on both families
    arm_files = {w.filename for w in plan_sources(arm.easyconfigs, stacks)}
    x86_files = {w.filename for w in plan_sources(x86.easyconfigs, stacks)}
    assert ARM_WHEEL in arm_files and X86_WHEEL not in arm_files
    assert X86_WHEEL in x86_files and ARM_WHEEL not in x86_files
    assert arm.robot_paths[0].name == "easyconfigs-aarch64" and x86.robot_paths == arm.robot_paths[1:]
    wanted = {w.filename: w for w in plan_sources(arm.easyconfigs, stacks)}[ARM_WHEEL]
    assert wanted.sha256 == "41a56b70e8139884eccb2f733c2f7378af06c82304959e174f8e7370af112e09"
    provider = stacks.provider(ARM_WHEEL)
    assert provider is not None and (provider.kind, provider.what) == ("pypi", "numpy==1.25.1")
    argv = pip_download_argv(provider.what, ARM_WHEEL, Path("/d"))
    assert argv[argv.index("--platform") + 1] == "manylinux_2_17_aarch64"
    assert "manylinux2014_aarch64" in argv


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="says what an x86_64 host does")
def test_plan_of_an_aarch64_target_on_x86_64_uses_the_layer_tools_and_records_them(tmp_path):
    stacks, matrix = load_stacks(), load_matrix()
    arm = BuildPlan.create(
        matrix, stacks, matrix.target("aarch64_generic"), "2023.06", "r.eessi.local", tmp_path
    )
    x86 = BuildPlan.create(
        matrix, stacks, matrix.target("x86_64_generic"), "2023.06", "r.eessi.local", tmp_path
    )
    assert arm.layer_tools and not x86.layer_tools
    assert arm.compat_prefix == LAYER
    assert "layer_tools" in build_inputs(arm, {}, "5.4.1", "-O2", "d")["compat_layer"]
    assert "layer_tools" not in build_inputs(x86, {}, "5.4.1", "-O2", "d")["compat_layer"]


def _stream_report(emulated: str, ref: float = 10.0) -> dict:
    tc = {
        "display_name": "stream_check %scale=1_core",
        "reference_key": "stream_check/1_core",
        "emulated": emulated,
        "system": "eessi_local",
        "partition": "aarch64_generic",
        "result": "pass",
        "time_total": 1.0,
        "perfvalues": {"eessi_local:aarch64_generic:Triad": [0.5, ref, -0.1, None, "GB/s", "pass"]},
    }
    return {"session_info": {"num_cases": 1}, "runs": [{"testcases": [tc]}]}


def test_emulated_performance_is_recorded_but_not_judged():
    emulated = parse_report(_stream_report("qemu-aarch64 7.2"))
    (case,) = emulated.cases
    (value,) = case.perf
    assert emulated.ok and value.in_band() and value.value == 0.5
    assert value.describe(case.key) == (
        "stream_check/1_core: Triad = 0.5 GB/s (emulated: not judged; qemu-aarch64 7.2)"
    )
    (measure,) = case_row(case).measures
    assert measure.text() == "Triad = 0.5 GB/s (emulated: not judged; qemu-aarch64 7.2)"
    native = parse_report(_stream_report(""))  # the same value natively is out of its band
    assert not native.ok and "outside its band" in native.failures[0]


def test_emulated_partition_says_so_and_claims_only_the_target_arch():
    matrix = load_matrix()
    target = matrix.target("aarch64_generic")
    tp = TargetPrefix(
        target, "/cvmfs/r/versions/2023.06/software/linux/aarch64/generic", LAYER, "qemu-aarch64 7.2"
    )
    (system,) = config([tp], num_cpus=2)["systems"]
    (part,) = system["partitions"]
    assert part["features"] == ["cpu", "arch_aarch64_generic", "emulated"]
    assert "emulated by qemu-aarch64 7.2" in part["descr"]
    assert part["processor"]["arch"] == "aarch64" and "features" not in part["processor"]
    env = reframe_env(tp, Path("/refs.yaml"), {EMULATED_ENV: "stale", "PATH": "/bin"})
    assert env[EMULATED_ENV] == "qemu-aarch64 7.2"
    native = TargetPrefix(matrix.target("x86_64_generic"), "/p")
    assert EMULATED_ENV not in reframe_env(native, Path("/refs.yaml"), {EMULATED_ENV: "stale"})


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="says what an x86_64 host does")
def test_cli_dry_run_says_the_layer_compiles_an_emulated_target(tmp_path):
    if not emulators_for(read_host_cpu(None), load_matrix().target("aarch64_generic")):
        pytest.skip("no aarch64 emulator registered here (bash setup.sh registers qemu-user-static)")
    argv = ["--state-dir", str(tmp_path), "build", "--target", "aarch64_generic", "--dry-run", "--json"]
    args = build_cli_parser().parse_args(argv)
    out = io.StringIO()
    assert args.handler(args, out) == 0
    steps = json.loads(out.getvalue())["commands"]
    assert set(steps) == {"compat_layer", "layer_tools", "eb", "link", "lmod_cache"}
    assert (
        "--sysroot=/cvmfs/software.eessi.local/versions/2023.06/compat/linux/aarch64" in steps["layer_tools"]
    )
    assert "QEMU_LD_PREFIX=/cvmfs/" in steps["layer_tools"]
    assert not any(tmp_path.iterdir())
