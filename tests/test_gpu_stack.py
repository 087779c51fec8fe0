"""The GPU stack: CUDA from NVIDIA's PyPI wheels and our GPU program, built by the real EasyBuild.

The build is real (``pip download`` of the pinned wheels, sha256-checked, EasyBuild 5 installing
CUDA and compiling ``gpu_bandwidth`` with its nvcc for sm_90, EasyBuild's own cuobjdump check of the
compute capability); about 15 s on 2 cores plus the download, so it stays in the CI run (slow).
What cannot exist here is the GPU: tests whose name says ``without_gpu`` or ``fake_driver`` stand in
for it (the program must say "no usable GPU"; the loader must look for libcuda in host_injections).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import DATA_DIR

from eessi_pipeline.cli import main
from eessi_pipeline.errors import BuildError, MatrixError
from eessi_pipeline.gpu.stack import ARCH_ENV, eb_argv, eb_env, plan_gpu_build
from eessi_pipeline.matrix import AccelTarget, load_matrix
from eessi_pipeline.software.easybuild import LMOD_INIT
from eessi_pipeline.software.stacks import load_stacks


def test_plan_puts_the_stack_in_the_accelerator_prefix(tmp_path: Path) -> None:
    m = load_matrix()
    plan = plan_gpu_build(m, load_stacks(), m.accel_target("zen4_cc90"), "2023.06", tmp_path)
    assert plan.installpath == tmp_path / (
        "gpu/2023.06/zen4_cc90/upper/versions/2023.06/software/linux/x86_64/amd/zen4/accel/nvidia/cc90"
    )
    assert plan.cuda_arch == "sm_90"
    argv = eb_argv(plan, as_root=False)
    assert "--cuda-compute-capabilities=9.0" in argv
    assert f"--easystack={plan.stack.easystack}" in argv
    env = eb_env(plan, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/x"}, as_root=False)
    assert env[ARCH_ENV] == "sm_90" and env["PATH"].startswith(str(plan.tools))
    assert "LD_LIBRARY_PATH" not in env
    cc80 = plan_gpu_build(m, load_stacks(), m.accel_target("icelake_cc80"), None, tmp_path)
    assert cc80.cuda_arch == "sm_80" and "--cuda-compute-capabilities=8.0" in eb_argv(cc80, as_root=True)


def test_gpu_stack_is_not_a_default_stack() -> None:
    stacks = load_stacks()
    m = load_matrix()
    for v in m.versions:
        for t in m.targets_for(v.name):
            assert stacks.stack_name_for(v.name, t) != "gpu"


def test_unknown_target_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--state-dir", str(tmp_path), "gpu", "build", "--target", "zen2_cc90"], io.StringIO())
    assert rc == 1 and "unknown accelerator target 'zen2_cc90'" in capsys.readouterr().err
    with pytest.raises(MatrixError):
        load_matrix().accel_target("zen2_cc90")


def test_every_accel_target_and_version_of_the_matrix_can_be_planned(tmp_path: Path) -> None:
    """What the workflow's gpu job runs: each (accelerator target, version) has a GPU stack."""
    m, stacks = load_matrix(), load_stacks()
    for at in m.every_accel_target():
        for v in at.versions:
            assert plan_gpu_build(m, stacks, at, v, tmp_path).stack.name == "gpu"


def test_version_without_the_cpu_target_refused(tmp_path: Path) -> None:
    m = load_matrix()
    zen4 = m.target("zen4")
    only_2025 = AccelTarget(dataclasses.replace(zen4, versions=("2025.06",)), zen4.accelerators[0])
    with pytest.raises(BuildError, match=r"not built in stack version 2023\.06"):
        plan_gpu_build(m, load_stacks(), only_2025, "2023.06", tmp_path)


# -- the real build ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = tmp_path_factory.mktemp("gpu-state")
    out = io.StringIO()
    rc = main(["--state-dir", str(state), "gpu", "build", "--target", "zen4_cc90", "--json"], out)
    assert rc == 0, "gpu build failed (see stderr)"
    summary: dict[str, Any] = json.loads(out.getvalue())
    return summary


def _with_modules(built: dict[str, Any], command: str, env: dict[str, str] | None = None) -> str:
    script = (
        f"source {LMOD_INIT} && module use {built['modulepath']} && module load GPUBandwidth && {command}"
    )
    res = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}, **(env or {})},
    )  # fmt: skip
    return res.stdout + res.stderr


@pytest.mark.slow
def test_build_installs_cuda_and_the_program_with_modules(built: dict[str, Any]) -> None:
    assert built["modules"] == ["CUDA/13.5.37-pypi", "GPUBandwidth/0.1-CUDA-13.5.37-pypi"]
    modules = Path(built["modulepath"])
    assert (modules / "CUDA" / "13.5.37-pypi.lua").is_file()
    assert (modules / "GPUBandwidth" / "0.1-CUDA-13.5.37-pypi.lua").is_file()
    assert all(len(v) == 64 for v in built["sources"].values())  # every source verified by sha256


@pytest.mark.slow
def test_program_holds_sm_90_code_only(built: dict[str, Any]) -> None:
    out = _with_modules(built, "cuobjdump --list-elf $(command -v gpu_bandwidth)")
    archs = set(re.findall(r"\.(sm_\d+)\.cubin", out))
    assert archs == {"sm_90"}, out


@pytest.mark.slow
def test_module_nvcc_compiles_for_the_gpu(built: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "k.cu").write_text("__global__ void k(float* x){x[0]=1;}\nint main(){return 0;}\n")
    out = _with_modules(
        built, f"cd {tmp_path} && nvcc -arch=sm_80 -o k k.cu && command -v nvcc && echo built"
    )
    assert out.strip().endswith("built"), out
    assert built["prefix"] in out  # the module's nvcc, not a host one


@pytest.mark.slow
def test_gpu_program_without_gpu_says_no_gpu(built: dict[str, Any]) -> None:
    out = _with_modules(built, "gpu_bandwidth --query; echo exit=$?")
    first = json.loads(out.splitlines()[0])
    assert first["ok"] is False and first["no_gpu"] is True
    assert out.strip().endswith("exit=2")


@pytest.mark.slow
def test_gpu_program_looks_for_libcuda_in_host_injections_with_fake_driver(
    built: dict[str, Any], tmp_path: Path
) -> None:
    """The module appends host_injections/nvidia/<family>/latest to LD_LIBRARY_PATH; links made by
    ``gpu link-drivers`` (to an empty stand-in driver here) are where the loader looks for libcuda."""
    listing = DATA_DIR / "gpu-host" / "ldconfig-p.txt"
    for line in listing.read_text().splitlines():
        path = tmp_path / "host" / line.rsplit("=> ", 1)[1].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    rc = main(
        ["gpu", "link-drivers", "--ldconfig", str(listing), "--family", "x86_64",
         "--sysroot", str(tmp_path / "host"), "--root", str(tmp_path / "hi")],
        io.StringIO(),
    )  # fmt: skip
    assert rc == 0
    latest = tmp_path / "hi" / "nvidia" / "x86_64" / "latest"
    out = _with_modules(
        built,
        'echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; LD_DEBUG=libs gpu_bandwidth --query',
        {"EESSI_PIPELINE_NVIDIA_DRIVER_DIR": str(latest)},
    )
    assert f"LD_LIBRARY_PATH={latest}" in out or f":{latest}" in out
    assert f"trying file={latest}/libcuda.so.1" in out


# -- benchmarks/device_gpu.sh without a GPU ------------------------------------------------------

DEVICE_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "device_gpu.sh"


def _device_script(out: Path, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(out), "DEVICE_PYTHON": sys.executable}
    res = subprocess.run(
        ["bash", str(DEVICE_SCRIPT), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**base, **env},
    )
    return res.returncode, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_device_script_without_gpu_says_so_and_exits_2(built: dict[str, Any], tmp_path: Path) -> None:
    program = next(Path(built["prefix"]).glob("software/GPUBandwidth/*/bin/gpu_bandwidth"))
    rc, summary = _device_script(tmp_path / "out", {"GPU_BANDWIDTH": str(program)})
    steps = {s["step"]: s for s in summary["steps"]}
    assert rc == 2 and summary["no_gpu"] is True
    assert steps["nvidia-smi"]["status"] == "no-gpu"
    assert steps["detect-accel"] == {"step": "detect-accel", "status": "ok", "detail": "no GPU: empty answer"}
    assert steps["device-query"]["status"] == "no-gpu"
    assert steps["bandwidth"]["status"] == "skipped"
    assert steps["reframe"]["status"] == "skipped"


@pytest.mark.slow
def test_device_script_with_fake_nvidia_smi_detects_cc90_and_no_usable_gpu(
    built: dict[str, Any], tmp_path: Path
) -> None:
    """A stand-in nvidia-smi (the recorded H200) makes detection answer cc90; the real CUDA runtime
    then finds no driver, which the script reports as no usable GPU, not as a failure."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvidia-smi").symlink_to(DATA_DIR / "archdetect" / "nvidia-smi" / "1xh200.sh")
    program = next(Path(built["prefix"]).glob("software/GPUBandwidth/*/bin/gpu_bandwidth"))
    rc, summary = _device_script(
        tmp_path / "out", {"GPU_BANDWIDTH": str(program), "PATH": f"{bindir}:/usr/bin:/bin"}
    )
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["nvidia-smi"]["status"] == "ok"
    assert steps["detect-accel"]["detail"] == "accel/nvidia/cc90"
    assert steps["device-query"]["status"] == "no-gpu"
    assert rc == 2


def test_device_script_without_its_program_fails_naming_it(tmp_path: Path) -> None:
    rc, summary = _device_script(tmp_path / "out", {"GPU_BANDWIDTH": str(tmp_path / "absent")})
    steps = {s["step"]: s for s in summary["steps"]}
    assert rc == 1 and steps["device-query"]["status"] == "failed"
    assert "absent is missing" in steps["device-query"]["detail"]


def test_missing_host_tool_is_refused_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "g++").symlink_to("/bin/true")  # a PATH with g++ but without unzip
    old = os.environ["PATH"]
    os.environ["PATH"] = str(bindir)
    try:
        rc = main(
            ["--state-dir", str(tmp_path / "s"), "gpu", "build", "--target", "zen4_cc90"], io.StringIO()
        )
    finally:
        os.environ["PATH"] = old
    err = capsys.readouterr().err
    assert rc == 1 and "needs unzip on PATH" in err and err.count("\n") == 1


def test_gpu_plan_names_prefix_tarball_runner_and_steps() -> None:
    out = io.StringIO()
    assert main(["gpu", "plan", "--target", "sapphirerapids_cc90", "--json"], out) == 0
    plan = json.loads(out.getvalue())
    assert plan["subdir"] == "x86_64/intel/sapphirerapids/accel/nvidia/cc90"
    assert plan["install_prefix"].endswith("/versions/2023.06/software/linux/" + plan["subdir"])
    assert plan["tarball"].startswith(
        "eessi-2023.06-software-linux-x86_64-intel-sapphirerapids-accel-nvidia-cc90-"
    )
    assert plan["cuda_arch"] == "sm_90" and "gpu-cc90" in plan["runner"]
    assert [s["name"] for s in plan["steps"]] == ["detect", "build", "driver", "checks", "gate"]


def test_cpu_plan_of_an_accel_target_points_to_gpu_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--target", "zen4_cc90"], io.StringIO()) == 2
    assert "use `eessi-pipeline gpu plan --target zen4_cc90`" in capsys.readouterr().err
