"""The published init scripts: the bash detector agrees with the Python selection; init/bash works."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import archspec.cpu
import pytest
from helpers import archdetect_cases

from eessi_pipeline.arch.cpuinfo import parse_cpuinfo
from eessi_pipeline.arch.select import select_target
from eessi_pipeline.cvmfs.tarcheck import check_tarball
from eessi_pipeline.initscript import build_init_tarball, render, spec_lines, write_init_dir
from eessi_pipeline.matrix import load_matrix

MATRIX = load_matrix()
VERSIONS = [v.name for v in MATRIX.versions]
ARCHSPEC_DUMPS = sorted(
    (Path(archspec.cpu.__file__).resolve().parent.parent / "json" / "tests" / "targets").glob("linux-*")
)
DUMPS = archdetect_cases() + ARCHSPEC_DUMPS
REPO = "software.eessi.local"


@pytest.fixture(scope="module")
def init_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("init")
    out = {}
    for v in VERSIONS:
        write_init_dir(render(MATRIX, v, REPO), root / v)
        out[v] = root / v
    return out


def _detect(init_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(init_dir / "eessi_archdetect.sh"), *args, "cpupath"],
        env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dump", DUMPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_bash_detector_agrees_with_python_selection(
    init_dirs: dict[str, Path], dump: Path, version: str
) -> None:
    expected = select_target(parse_cpuinfo(dump.read_text(), str(dump)), MATRIX, version)
    best = _detect(init_dirs[version], {"EESSI_PROC_CPUINFO": str(dump)})
    every = _detect(init_dirs[version], {"EESSI_PROC_CPUINFO": str(dump)}, "-a")
    assert best.stdout.strip() == expected.subdir, best.stderr
    assert every.stdout.strip() == ":".join(expected.candidates), every.stderr


def test_bash_detector_override_wins_and_bad_override_fails(init_dirs: dict[str, Path]) -> None:
    d = init_dirs["2023.06"]
    ok = _detect(d, {"EESSI_SOFTWARE_SUBDIR_OVERRIDE": "x86_64/amd/zen2"}, "-a")
    assert ok.stdout.strip() == "x86_64/amd/zen2:x86_64/generic"
    bad = _detect(d, {"EESSI_SOFTWARE_SUBDIR_OVERRIDE": "x86_64/amd/zen5"})
    assert bad.returncode == 1 and "not a target of this version" in bad.stderr


def test_spec_lines_most_specific_first() -> None:
    order = list(
        dict.fromkeys(line.subdir for line in spec_lines(MATRIX, "2025.06") if line.family == "x86_64")
    )
    assert order.index("x86_64/amd/zen5") < order.index("x86_64/amd/zen4") < order.index("x86_64/amd/zen2")
    assert order[-1] == "x86_64/generic"


def _prefix(tmp_path: Path, version: str, subdirs: list[str]) -> Path:
    repo = tmp_path / "cvmfs" / REPO
    write_init_dir(render(MATRIX, version, REPO), repo / "versions" / version / "init")
    for sub in subdirs:
        mod = repo / "versions" / version / "software" / "linux" / sub / "modules" / "all" / "hello"
        mod.mkdir(parents=True)
        (mod / "1.0.lua").write_text(f'whatis("hello world")\nsetenv("HELLO_SUBDIR", "{sub}")\n')
    return repo


def _source(repo: Path, version: str, cpuinfo: Path, script: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(repo.parent), "EESSI_CVMFS_REPO_OVERRIDE": str(repo),
           "EESSI_PROC_CPUINFO": str(cpuinfo), "EESSI_SILENT": "1"}  # fmt: skip
    return subprocess.run(["bash", "-c", f"source {repo}/versions/{version}/init/bash && {script}"],
                          env=env, capture_output=True, text=True, check=False)  # fmt: skip


ZEN3 = next(p for p in archdetect_cases() if p.parent.name == "zen3")


def test_init_bash_falls_back_to_an_installed_candidate(tmp_path: Path) -> None:
    repo = _prefix(tmp_path, "2023.06", ["x86_64/amd/zen2", "x86_64/generic"])  # no zen3 build
    done = _source(repo, "2023.06", ZEN3, 'echo "$EESSI_SOFTWARE_SUBDIR|$MODULEPATH"')
    assert done.returncode == 0, done.stderr
    subdir, modulepath = done.stdout.strip().split("|")
    assert subdir == "x86_64/amd/zen2"
    assert modulepath == f"{repo}/versions/2023.06/software/linux/x86_64/amd/zen2/modules/all"


def test_init_bash_no_installed_candidate_fails_clearly(tmp_path: Path) -> None:
    repo = _prefix(tmp_path, "2023.06", ["aarch64/generic"])
    done = _source(repo, "2023.06", ZEN3, "echo unreachable")
    assert done.returncode != 0 and "no software installed" in done.stderr


@pytest.mark.skipif(shutil.which("lmod") is None and not Path("/usr/share/lmod/lmod/init/bash").exists(),
                    reason="Lmod is not installed (Debian package lmod)")  # fmt: skip
def test_init_bash_module_load_uses_the_selected_target(tmp_path: Path) -> None:
    repo = _prefix(tmp_path, "2023.06", ["x86_64/amd/zen3", "x86_64/generic"])
    done = _source(
        repo, "2023.06", ZEN3, 'module -t avail 2>&1; module load hello && echo "loaded $HELLO_SUBDIR"'
    )
    assert done.returncode == 0, done.stderr
    assert "hello/1.0" in done.stdout
    assert "loaded x86_64/amd/zen3" in done.stdout


def test_init_tarball_passes_validation_and_has_the_files(tmp_path: Path) -> None:
    t = build_init_tarball(MATRIX, "2023.06", REPO, tmp_path, stamp=1700000000)
    assert t.name == "eessi-2023.06-init-1700000000.tar.gz"
    check_tarball(t, repository=REPO)
    with tarfile.open(t) as tf:
        names = tf.getnames()
    assert names == sorted(names) or names[:2] == ["2023.06", "2023.06/init"]
    assert {"2023.06/init/bash", "2023.06/init/eessi_archdetect.sh", "2023.06/init/arch_specs.txt"} <= set(
        names
    )
