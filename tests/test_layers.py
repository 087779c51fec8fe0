"""The three-layer pieces of ``eessi-pipeline run``: the compat step's decisions, host_injections as a
variant symlink (written, expanded), Lmod's SitePackage hook with a real Lmod, and the /proc maps sampler
(real processes held at their first write)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from eessi_pipeline.checks.procmaps import (
    ProcessMaps,
    foreign_files,
    mapped_files,
    run_sampled,
    session_problems,
)
from eessi_pipeline.checks.smoke import load_smoke
from eessi_pipeline.cli.run import error_lines, session_output
from eessi_pipeline.compat.layout import LayerSpec
from eessi_pipeline.cvmfs.reader import open_repository
from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.cvmfs.variant import expand, is_variant
from eessi_pipeline.layers import (
    HOST_INJECTIONS_TARGET,
    compat_pytest_argv,
    ensure_host_injections,
    identity_json,
    use_spec,
)
from eessi_pipeline.software.lmodfiles import lmodrc, write_lmod_files

REPO = "software.eessi.local"
MODULES = ("zlib/1.2.13", "STREAM/5.10-hpcc-1.5.0", "SciPy-bundle/2023.07")
HOST_LMOD = Path("/usr/share/lmod/lmod/init/bash")


def test_variant_symlink_expands_from_the_client_environment() -> None:
    assert is_variant(HOST_INJECTIONS_TARGET) and not is_variant("/opt/eessi")
    assert expand(HOST_INJECTIONS_TARGET, {}) == "/opt/eessi"
    assert expand(HOST_INJECTIONS_TARGET, {"EESSI_HOST_INJECTIONS": ""}) == "/opt/eessi"
    assert expand(HOST_INJECTIONS_TARGET, {"EESSI_HOST_INJECTIONS": "/site/eessi"}) == "/site/eessi"
    assert expand("$(ARCH)/lib/$(X:-x)", {"ARCH": "x86_64"}) == "x86_64/lib/x"
    assert expand("a/$(UNSET)/b", {}) == "a//b"  # as cvmfs: an unset variable without default is empty


def test_host_injections_is_published_once_as_the_variant_symlink(tmp_path: Path) -> None:
    repo = Repository(tmp_path, REPO)
    repo.init()
    first = ensure_host_injections(tmp_path, REPO)
    assert first == repo.manifest().revision
    assert ensure_host_injections(tmp_path, REPO) is None  # already there: no new revision
    with open_repository(repo.paths.web_root / REPO) as reader:
        entry = reader.lookup("/host_injections")
        assert entry is not None and stat.S_ISLNK(entry.mode)
        assert entry.symlink == "$(EESSI_HOST_INJECTIONS:-/opt/eessi)"
        assert reader.manifest.revision == first


def test_compat_identity_and_gated_test_run_are_decided_from_the_spec(tmp_path: Path) -> None:
    spec = LayerSpec.create("2023.06", "x86_64", tmp_path, repository=REPO)
    data = json.loads(identity_json("abc", spec))
    assert data == {"inputs_digest": "abc", "version": "2023.06", "family": "x86_64", "prefix": spec.prefix}
    argv = compat_pytest_argv("py", tmp_path / "t.tar.gz", tmp_path, tmp_path / "run", "aarch64")
    assert argv[:4] == ["py", "-m", "pytest", "tests/test_compat_layer.py"]
    assert f"--eessi-gate-tarball={tmp_path / 't.tar.gz'}" in argv and "--eessi-gate-stage" in argv
    assert "--eessi-compat-family=aarch64" in argv  # the record holds the aarch64 layer's tests only
    assert (
        f"--eessi-gate-reframe-report={tmp_path / 'run' / 'reframe-compat' / 'aarch64' / 'report.json'}"
        in argv
    )
    assert f"--eessi-compat-state={tmp_path}" in argv


def test_use_spec_runs_the_layers_bash_sources_the_entry_and_loads_every_module() -> None:
    spec = use_spec(REPO, "2023.06", "x86_64", "lmod/bash", MODULES, load_smoke())
    assert spec["bash"] == f"/cvmfs/{REPO}/versions/2023.06/compat/linux/x86_64/bin/bash"
    setup = spec["setup"].splitlines()
    assert setup[:2] == ["set -e", f"source /cvmfs/{REPO}/versions/2023.06/init/lmod/bash"]
    assert [line for line in setup if line.startswith("module load")] == [f"module load {m}" for m in MODULES]
    assert [c["module"] for c in spec["commands"]] == list(MODULES)
    assert spec["commands"][1]["command"] == "stream 8"


def test_mapped_files_and_foreign_files() -> None:
    maps = (
        "55d0-55d1 r--p 00000000 00:2a 12 /cvmfs/r/versions/v/compat/linux/x86_64/bin/bash\n"
        "7f00-7f01 r-xp 00000000 00:2a 13 /cvmfs/r/versions/v/compat/linux/x86_64/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f02-7f03 rw-p 00000000 00:00 0 \n"
        "7f04-7f05 r--p 00000000 08:01 99 /usr/lib/locale/C.utf8/LC_CTYPE\n"
        "7f06-7f07 rw-s 00000000 00:01 5 /dev/zero (deleted)\n"
        "7ffd-7ffe r-xp 00000000 00:00 0 [vdso]\n"
    )
    files = mapped_files(maps)
    assert files == (
        "/cvmfs/r/versions/v/compat/linux/x86_64/bin/bash",
        "/cvmfs/r/versions/v/compat/linux/x86_64/lib/x86_64-linux-gnu/libc.so.6",
        "/dev/zero",
        "/usr/lib/locale/C.utf8/LC_CTYPE",
    )
    proc = ProcessMaps(7, "/cvmfs/r/versions/v/compat/linux/x86_64/bin/bash", files)
    assert foreign_files([proc], ["/cvmfs/r"]) == [
        "/cvmfs/r/versions/v/compat/linux/x86_64/bin/bash (pid 7) maps /usr/lib/locale/C.utf8/LC_CTYPE"
    ]
    assert foreign_files([proc], ["/cvmfs/r", "/usr/lib/locale"]) == []
    assert foreign_files([proc], ["/cvmfs/rr"]) != []  # a prefix of a name is not its directory


def test_run_sampled_holds_a_real_program_at_its_first_write_and_reads_its_maps() -> None:
    python = shutil.which("python3")
    assert python is not None
    code = "import json, sys; sys.stdout.write('hello\\n' * 3000); sys.stderr.write('bye\\n')"
    run = run_sampled([python, "-c", code], {"PATH": "/usr/bin:/bin"}, timeout=60)
    assert run.returncode == 0 and run.held
    assert run.output == "hello\n" * 3000 + "bye\n"  # all output arrives, the filler does not
    (proc,) = run.processes
    assert Path(proc.exe).name.startswith("python3")
    assert any("/libc.so" in f for f in proc.files) and any("_json" in f for f in proc.files)


def test_run_sampled_reports_a_silent_command_as_not_held() -> None:
    run = run_sampled(["true"], {"PATH": "/usr/bin:/bin"}, timeout=60)
    assert run.returncode == 0 and not run.held and run.processes == ()


def _session(
    setup_out: str, rc: int = 0, held: bool = True, files: tuple[str, ...] = ()
) -> dict[str, object]:
    proc = {"pid": 1, "exe": "/cvmfs/r/compat/bin/bash", "files": list(files)}
    run = {"returncode": rc, "output": setup_out, "held": held, "processes": [proc]}
    cmd = {"returncode": 0, "output": "Solution Validates\n", "held": True, "processes": [proc]}
    return {"setup": run, "commands": [{"module": "STREAM/5", "command": "stream 8", "run": cmd}]}


def test_session_problems_and_output() -> None:
    good = _session("Environment set up\n", files=("/cvmfs/r/compat/lib/libc.so.6",))
    assert session_problems(good, ["/cvmfs/r"]) == []
    assert session_output(good) == "Environment set up\n$ stream 8\nSolution Validates\n"
    assert session_problems(_session("x", rc=1), ["/cvmfs/r"]) == ["setup: exit 1: x"]
    assert session_problems(_session("x", held=False), ["/cvmfs/r"]) == [
        "setup: wrote nothing, so its processes could not be sampled"
    ]
    bad = session_problems(_session("x", files=("/lib/x86_64-linux-gnu/libc.so.6",)), ["/cvmfs/r"])
    assert len(bad) == 2 and all("maps /lib/x86_64-linux-gnu/libc.so.6" in p for p in bad)
    assert error_lines(
        "ok\nEESSI: compatibility layer /x not found\nLmod has detected the following error: y\n"
    ) == [
        "EESSI: compatibility layer /x not found",
        "Lmod has detected the following error: y",
    ]


@pytest.mark.skipif(not HOST_LMOD.exists(), reason="Lmod is not installed (Debian lmod)")
def test_site_package_hook_puts_a_sites_rpath_override_first_and_takes_it_back(tmp_path: Path) -> None:
    """The published SitePackage.lua, run by a real Lmod: host_injections/.../rpath_overrides/<Name>."""
    software = tmp_path / "repo/versions/2023.06/software/linux/x86_64/generic"
    (software / "modules/all/OpenMPI").mkdir(parents=True)
    (software / "modules/all/OpenMPI/4.1.lua").write_text('setenv("MPI_LOADED", "1")\n')
    write_lmod_files(software / ".lmod", str(software))
    assert f'"{software}/.lmod/cache"' in lmodrc(str(software))
    site = tmp_path / "site"  # what the variant symlink points at on this client
    override = site / "2023.06/software/linux/x86_64/generic/rpath_overrides/OpenMPI/system/lib"
    override.mkdir(parents=True)
    (tmp_path / "repo/host_injections").symlink_to(site)
    script = (
        f'source {HOST_LMOD}; module load OpenMPI; echo "1:$MPI_LOADED:$LD_LIBRARY_PATH"; '
        'module unload OpenMPI; echo "2:$LD_LIBRARY_PATH"'
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MODULEPATH": str(software / "modules/all"),
           "LMOD_PACKAGE_PATH": str(software / ".lmod"), "EESSI_CVMFS_REPO": str(tmp_path / "repo"),
           "EESSI_VERSION": "2023.06", "EESSI_SOFTWARE_SUBDIR": "x86_64/generic"}  # fmt: skip
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    via_repo = tmp_path / "repo/host_injections/2023.06/software/linux/x86_64/generic/rpath_overrides/OpenMPI"
    assert f"1:1:{via_repo}/system/lib" in done.stdout
    assert "2:\n" in done.stdout
    shutil.rmtree(site)  # no override on this client: the hook changes nothing
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=False)
    assert "1:1:\n" in done.stdout


def _tarball(path: Path, links: dict[str, str]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tf:
        dirs = {"2023.06"}
        for name in links:
            parts = name.split("/")
            dirs |= {"/".join(parts[:i]) for i in range(1, len(parts))}
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        info = tarfile.TarInfo("2023.06/compat/linux/x86_64/bin/true")
        info.size, info.mode = 1, 0o755
        tf.addfile(info, io.BytesIO(b"x"))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def test_ingest_accepts_a_layer_link_that_ends_at_its_host_link_and_nothing_further(tmp_path: Path) -> None:
    """Debian's tzdata links usr/share/zoneinfo/localtime to etc/localtime, the layer's link to the host's
    /etc/localtime: the chain ends at an allowed host link.  Going *through* a host link stays refused."""
    from eessi_pipeline.errors import TarballRejected

    layer = "2023.06/compat/linux/x86_64"
    repo = Repository(tmp_path / "state", REPO)
    repo.init()
    good = {
        f"{layer}/etc/localtime": "/etc/localtime",
        f"{layer}/usr/share/zoneinfo/localtime": "../../../etc/localtime",
    }
    t = _tarball(tmp_path / "eessi-2023.06-compat-linux-x86_64-1700000000.tar.gz", good)
    revision = repo.ingest(t).revision
    bad = {**good, f"{layer}/usr/share/zone": "../../etc/localtime/x"}
    t2 = _tarball(tmp_path / "eessi-2023.06-compat-linux-x86_64-1700000001.tar.gz", bad)
    with pytest.raises(TarballRejected, match="passes through the host link"):
        repo.ingest(t2)
    assert repo.manifest().revision == revision


def test_a_gated_compat_tarball_still_staged_is_found_by_its_layer_identity(tmp_path: Path) -> None:
    """A run that stopped after gating the layer: the next run publishes that tarball, not a second one."""
    from eessi_pipeline.layers import IDENTITY_SUFFIX, staged_with_identity

    spec = LayerSpec.create("2023.06", "x86_64", tmp_path, repository=REPO)
    name = "eessi-2023.06-compat-linux-x86_64-1700000000.tar.gz"
    staged = tmp_path / "staging" / "new" / name
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"")
    assert staged_with_identity(tmp_path, spec, "digest-1") is None  # never gated by run
    spec.tarball_dir.mkdir(parents=True)
    (spec.tarball_dir / f"{name}{IDENTITY_SUFFIX}").write_text("digest-1\n")
    assert staged_with_identity(tmp_path, spec, "digest-1") == staged
    assert staged_with_identity(tmp_path, spec, "digest-2") is None  # another layer: gate it anew
