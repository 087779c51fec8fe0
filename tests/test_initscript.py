"""The published init scripts: the bash detector agrees with the Python selection; init/bash works."""

from __future__ import annotations

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
from eessi_pipeline.software.lmodfiles import write_lmod_files

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


HOST_LMOD = Path("/usr/share/lmod/lmod")
needs_lmod = pytest.mark.skipif(
    not (HOST_LMOD / "init/bash").exists(), reason="Lmod is not installed (Debian lmod)"
)


def _prefix(tmp_path: Path, version: str, subdirs: list[str], *, compat: bool = True) -> Path:
    """A repository tree with the init scripts, modules ``hello/1.0`` with their ``.lmod`` files, and a
    stand-in compatibility layer whose bash and Lmod are the host's (the real layer is tested end to end)."""
    repo = tmp_path / "cvmfs" / REPO
    write_init_dir(render(MATRIX, version, REPO), repo / "versions" / version / "init")
    for sub in subdirs:
        software = repo / "versions" / version / "software" / "linux" / sub
        mod = software / "modules" / "all" / "hello"
        mod.mkdir(parents=True)
        (mod / "1.0.lua").write_text(f'whatis("hello world")\nsetenv("HELLO_SUBDIR", "{sub}")\n')
        write_lmod_files(software / ".lmod", str(software))
    if compat:
        layer = repo / "versions" / version / "compat" / "linux" / "x86_64"
        (layer / "bin").mkdir(parents=True)
        (layer / "bin" / "bash").symlink_to("/bin/bash")
        (layer / "usr" / "share").mkdir(parents=True)
        (layer / "usr" / "share" / "Lmod").symlink_to(HOST_LMOD)
    return repo


def _source(
    repo: Path, version: str, cpuinfo: Path, script: str, entry: str = "bash", silent: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(repo.parent), "EESSI_CVMFS_REPO_OVERRIDE": str(repo),
           "EESSI_PROC_CPUINFO": str(cpuinfo), "EESSI_MACHINE_TYPE": "x86_64"}  # fmt: skip
    if silent:
        env["EESSI_SILENT"] = "1"
    return subprocess.run(["bash", "-c", f"source {repo}/versions/{version}/init/{entry} && {script}"],
                          env=env, capture_output=True, text=True, check=False)  # fmt: skip


ZEN3 = next(p for p in archdetect_cases() if p.parent.name == "zen3")


@needs_lmod
def test_init_bash_falls_back_to_an_installed_candidate(tmp_path: Path) -> None:
    repo = _prefix(tmp_path, "2023.06", ["x86_64/amd/zen2", "x86_64/generic"])  # no zen3 build
    done = _source(repo, "2023.06", ZEN3, 'echo "$EESSI_SOFTWARE_SUBDIR|$MODULEPATH"')
    assert done.returncode == 0, done.stderr
    subdir, modulepath = done.stdout.strip().split("|")
    assert subdir == "x86_64/amd/zen2"
    assert modulepath == f"{repo}/versions/2023.06/software/linux/x86_64/amd/zen2/modules/all"


@needs_lmod
def test_init_bash_no_installed_candidate_fails_clearly(tmp_path: Path) -> None:
    repo = _prefix(tmp_path, "2023.06", ["aarch64/generic"])
    done = _source(repo, "2023.06", ZEN3, "echo unreachable")
    assert done.returncode != 0 and "no software installed" in done.stderr


@needs_lmod
def test_init_bash_module_load_uses_the_selected_target(tmp_path: Path) -> None:
    repo = _prefix(tmp_path, "2023.06", ["x86_64/amd/zen3", "x86_64/generic"])
    done = _source(
        repo, "2023.06", ZEN3, 'module -t avail 2>&1; module load hello && echo "loaded $HELLO_SUBDIR"'
    )
    assert done.returncode == 0, done.stderr
    assert "hello/1.0" in done.stdout
    assert "loaded x86_64/amd/zen3" in done.stdout


@needs_lmod
def test_init_bash_sets_up_eessi_variables_lmod_config_and_the_layer_path(tmp_path: Path) -> None:
    repo = _prefix(tmp_path, "2023.06", ["x86_64/amd/zen3"])
    software = f"{repo}/versions/2023.06/software/linux/x86_64/amd/zen3"
    layer = f"{repo}/versions/2023.06/compat/linux/x86_64"
    done = _source(repo, "2023.06", ZEN3,
                   'echo "$EESSI_EPREFIX|$LMOD_RC|$LMOD_PACKAGE_PATH|${PATH%%:*}|$EESSI_SITE_MODULEPATH"')  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split("|") == [
        layer,
        f"{software}/.lmod/lmodrc.lua",
        f"{software}/.lmod",
        f"{layer}/usr/bin",
        f"{repo}/host_injections/2023.06/software/linux/x86_64/amd/zen3/modules/all",
    ]
    assert done.stderr == ""
    site = repo / "host_injections/2023.06/software/linux/x86_64/amd/zen3"  # a site's own modules and cache
    write_lmod_files(site / ".lmod", str(site))
    (site / "modules/all").mkdir(parents=True)
    for entry in ("bash", "lmod/bash"):
        done = _source(repo, "2023.06", ZEN3, 'echo "$LMOD_RC|$MODULEPATH"', entry=entry)
        assert done.returncode == 0, done.stderr
        rc, modulepath = done.stdout.strip().split("|")
        assert rc.split(":")[:2] == [f"{site}/.lmod/lmodrc.lua", f"{software}/.lmod/lmodrc.lua"], entry
        assert modulepath.split(":")[:2] == [f"{site}/modules/all", f"{software}/modules/all"], entry


@needs_lmod
def test_init_bash_without_a_compat_layer_or_lmod_files_fails_clearly(tmp_path: Path) -> None:
    repo = _prefix(tmp_path / "a", "2023.06", ["x86_64/amd/zen3"], compat=False)
    done = _source(repo, "2023.06", ZEN3, "echo unreachable")
    assert done.returncode != 0 and "compatibility layer" in done.stderr and "not found" in done.stderr
    repo = _prefix(tmp_path / "b", "2023.06", ["x86_64/amd/zen3"])
    (repo / "versions/2023.06/software/linux/x86_64/amd/zen3/.lmod/SitePackage.lua").unlink()
    done = _source(repo, "2023.06", ZEN3, "echo unreachable")
    assert done.returncode != 0 and "SitePackage.lua not found" in done.stderr


@needs_lmod
def test_init_lmod_bash_loads_the_eessi_module_from_the_repository_path(tmp_path: Path) -> None:
    repo = _prefix(tmp_path, "2023.06", ["x86_64/amd/zen2", "x86_64/generic"])
    done = _source(
        repo, "2023.06", ZEN3,
        'module -t list 2>&1; module load hello && echo "loaded $HELLO_SUBDIR|$EESSI_CVMFS_REPO|$LMOD_PACKAGE_PATH"',
        entry="lmod/bash", silent=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "EESSI/2023.06" in done.stdout
    software = f"{repo}/versions/2023.06/software/linux/x86_64/amd/zen2"
    assert f"loaded x86_64/amd/zen2|{repo}|{software}/.lmod" in done.stdout
    assert "Environment set up to use" in done.stderr and "(x86_64/amd/zen2)" in done.stderr
    module = (repo / "versions/2023.06/init/modules/EESSI/2023.06.lua").read_text()
    assert "/cvmfs/" not in module  # the repository comes from where the module lies, not from the file


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
