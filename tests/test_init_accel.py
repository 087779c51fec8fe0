"""The accelerator part of the published init (init/bash and the EESSI/<version> module).

A repository tree with CPU modules and accelerator modules, the real rendered init scripts, the host's
Lmod and bash standing in for the compatibility layer's (as tests/test_initscript.py does).  The GPU
cannot exist here: stand-in ``nvidia-smi`` programs (test names say ``fake_nvidia_smi``) answer the
compute-capability query.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import archdetect_cases

from eessi_pipeline.gpu.initaccel import InitTemplateChanged, with_accel_bash, with_accel_lua
from eessi_pipeline.initscript import render, write_init_dir
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.software.lmodfiles import write_lmod_files

MATRIX = load_matrix()
REPO = "software.eessi.local"
HOST_LMOD = Path("/usr/share/lmod/lmod")
ZEN3 = next(p for p in archdetect_cases() if p.parent.name == "zen3")
CPU = "x86_64/amd/zen3"
needs_lmod = pytest.mark.skipif(not HOST_LMOD.is_dir(), reason="Lmod is not installed on this host")


def _module(dirpath: Path, name: str, value: str) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "1.0.lua").write_text(f'setenv("{name.upper()}_FROM", "{value}")\n')


def _repo(tmp_path: Path, accels: list[str]) -> Path:
    repo = tmp_path / "cvmfs" / REPO
    write_init_dir(render(MATRIX, "2023.06", REPO), repo / "versions" / "2023.06" / "init")
    software = repo / "versions" / "2023.06" / "software" / "linux" / CPU
    _module(software / "modules" / "all" / "hello", "hello", CPU)
    write_lmod_files(software / ".lmod", str(software))
    for accel in accels:
        _module(software / accel / "modules" / "all" / "gpuhello", "gpuhello", accel)
    layer = repo / "versions" / "2023.06" / "compat" / "linux" / "x86_64"
    (layer / "bin").mkdir(parents=True)
    (layer / "bin" / "bash").symlink_to("/bin/bash")
    (layer / "usr" / "share").mkdir(parents=True)
    (layer / "usr" / "share" / "Lmod").symlink_to(HOST_LMOD)
    return repo


def _fake_nvidia_smi(tmp_path: Path, cc: str) -> Path:
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    smi = bindir / "nvidia-smi"
    smi.write_text(
        f'#!/bin/sh\ncase "$*" in *compute_cap*) echo "{cc}";; *) echo "NVIDIA X, 1, 580.0.0, {cc}";; esac\n'
    )
    smi.chmod(0o755)
    return bindir


def _source(repo: Path, script: str, entry: str = "bash", extra_path: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    path = f"{extra_path}:/usr/bin:/bin" if extra_path else "/usr/bin:/bin"
    full = {"PATH": path, "HOME": str(repo.parent), "EESSI_CVMFS_REPO_OVERRIDE": str(repo),
            "EESSI_PROC_CPUINFO": str(ZEN3), "EESSI_MACHINE_TYPE": "x86_64", **(env or {})}  # fmt: skip
    return subprocess.run(["bash", "-c", f"source {repo}/versions/2023.06/init/{entry} && {script}"],
                          env=full, capture_output=True, text=True, check=False, timeout=120)  # fmt: skip


SHOW = 'echo "A:${EESSI_ACCELERATOR_TARGET:-none}|${MODULEPATH%%:*}"; module load gpuhello 2>/dev/null; echo "G:gpu=${GPUHELLO_FROM:-none}"'


def _shown(out: str) -> list[str]:
    """The two lines SHOW prints (accelerator|first module path, gpu=...), without init's messages."""
    return [line[2:] for line in out.splitlines() if line.startswith(("A:", "G:"))]


def test_rendered_init_has_the_accel_part_once() -> None:
    files = render(MATRIX, "2023.06", REPO)
    bash = files["bash"].decode()
    lua = files["modules/EESSI/2023.06.lua"].decode()
    assert (
        bash.count("EESSI_ACCELERATOR_TARGET_OVERRIDE") >= 1
        and bash.count("unset EESSI_ACCELERATOR_TARGET") == 1
    )
    assert lua.count('setenv("EESSI_ACCELERATOR_TARGET"') == 1
    assert bash.index("EESSI_MODULEPATH_ACCEL=") < bash.index("Environment set up to use")


def test_a_changed_template_is_refused() -> None:
    with pytest.raises(InitTemplateChanged, match=r"initaccel\.py"):
        with_accel_bash("echo no closing message here\n")
    with pytest.raises(InitTemplateChanged):
        with_accel_lua("-- nothing\n")


@needs_lmod
def test_no_nvidia_smi_keeps_cpu_modules_only(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["accel/nvidia/cc80"])
    done = _source(repo, SHOW, env={"EESSI_SILENT": "1"})
    assert done.returncode == 0, done.stderr
    lines = _shown(done.stdout)
    assert lines[0] == f"none|{repo}/versions/2023.06/software/linux/{CPU}/modules/all"
    assert lines[1] == "gpu=none"


@needs_lmod
@pytest.mark.parametrize(("cc", "expected"), [("8.0", "accel/nvidia/cc80"), ("8.6", "accel/nvidia/cc80")])
def test_fake_nvidia_smi_puts_the_accel_modules_first(tmp_path: Path, cc: str, expected: str) -> None:
    repo = _repo(tmp_path, ["accel/nvidia/cc80"])
    done = _source(repo, SHOW, extra_path=_fake_nvidia_smi(tmp_path, cc), env={"EESSI_SILENT": "1"})
    assert done.returncode == 0, done.stderr
    lines = _shown(done.stdout)
    software = f"{repo}/versions/2023.06/software/linux/{CPU}"
    assert lines[0] == f"{expected}|{software}/{expected}/modules/all"  # 8.6 falls back to cc80, as EESSI
    assert lines[1] == f"gpu={expected}"


@needs_lmod
def test_fake_nvidia_smi_of_a_gpu_without_builds_says_so(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["accel/nvidia/cc80"])
    done = _source(repo, SHOW, extra_path=_fake_nvidia_smi(tmp_path, "9.0"))
    assert done.returncode == 0, done.stderr
    assert _shown(done.stdout)[0].startswith("none|")
    assert "no software for accel/nvidia/cc90" in done.stderr


@needs_lmod
def test_override_wins_and_a_bad_override_stops_the_init(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["accel/nvidia/cc80", "accel/nvidia/cc90"])
    done = _source(repo, SHOW, extra_path=_fake_nvidia_smi(tmp_path, "9.0"),
                   env={"EESSI_SILENT": "1", "EESSI_ACCELERATOR_TARGET_OVERRIDE": "accel/nvidia/cc80"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _shown(done.stdout)[0].startswith("accel/nvidia/cc80|")
    done = _source(repo, "echo unreachable", env={"EESSI_ACCELERATOR_TARGET_OVERRIDE": "cc80"})
    assert done.returncode != 0 and "is not like accel/nvidia/cc90" in done.stderr
    assert "unreachable" not in done.stdout


@needs_lmod
def test_eessi_module_adds_the_accel_modules_with_fake_nvidia_smi(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["accel/nvidia/cc90"])
    done = _source(repo, SHOW, entry="lmod/bash", extra_path=_fake_nvidia_smi(tmp_path, "9.0"),
                   env={"EESSI_SILENT": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = _shown(done.stdout)
    software = f"{repo}/versions/2023.06/software/linux/{CPU}"
    assert lines[0] == f"accel/nvidia/cc90|{software}/accel/nvidia/cc90/modules/all"
    assert lines[1] == "gpu=accel/nvidia/cc90"
    unloaded = _source(
        repo, 'module unload EESSI; echo "${EESSI_ACCELERATOR_TARGET:-none}|${MODULEPATH:-empty}"',
        entry="lmod/bash", extra_path=_fake_nvidia_smi(tmp_path, "9.0"), env={"EESSI_SILENT": "1"},
    )  # fmt: skip
    assert unloaded.returncode == 0, unloaded.stderr
    assert unloaded.stdout.strip().split("|")[0] == "none"
    assert "accel/nvidia/cc90" not in unloaded.stdout
