"""Fast tests of the software layer's pure parts: stacks, easyconfigs, providers, eb argv, overlay argv."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from helpers import build_cli_json, build_cli_parser

from eessi_pipeline import nslaunch
from eessi_pipeline.errors import BuildError
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.software.driver import BuildPlan, inputs_digest, lmod_cache_argv, module_check_argv
from eessi_pipeline.software.easybuild import (
    HOOKS,
    EasyBuildConfig,
    eb_environment,
    eb_install_argv,
    eb_missing_argv,
    missing_modules,
    system_cflags,
)
from eessi_pipeline.software.easyconfig import parse_easyconfig
from eessi_pipeline.software.overlay import OverlayView
from eessi_pipeline.software.sources import (
    Provisioner,
    Wanted,
    apt_source_argv,
    apt_sources_list,
    pip_download_argv,
    plan_sources,
)
from eessi_pipeline.software.stacks import DebianArchive, ProviderSpec, load_easystack, load_stacks
from eessi_pipeline.software.tarball import metadata, run_link, tarball_name

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stacks():
    return load_stacks()


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def test_stacks_every_target_gets_the_ci_stack_with_three_upstream_packages(stacks, matrix):
    for t in matrix.targets_for("2023.06"):
        stack = stacks.stack_for("2023.06", t)
        assert stack.name == "ci"
        assert stack.modules == ("zlib/1.2.13", "STREAM/5.10-hpcc-1.5.0", "SciPy-bundle/2023.07")


def test_stacks_full_stack_adds_gsl(stacks):
    assert "GSL/2.7.1" in stacks.stack("2023.06", "full").modules


def test_easyconfigs_all_use_the_system_toolchain_and_carry_checksums(stacks):
    for path in sorted(stacks.easyconfig_dir.rglob("*.eb")):
        text = path.read_text()
        assert "toolchain = SYSTEM" in text, path
        ec = parse_easyconfig(path)
        assert ec.sources and all(s.sha256 for s in ec.sources), path
        assert path.parent.name == ec.name and path.parent.parent.name == ec.name[0].lower()


def test_stacks_unknown_stack_names_the_choices(stacks):
    with pytest.raises(BuildError, match=r"no stack 'nope'.*ci"):
        stacks.stack("2023.06", "nope")


def test_stacks_schema_error_names_file_and_key(tmp_path):
    bad = tmp_path / "stacks.yaml"
    bad.write_text("schema_version: 1\nversions: {'2023.06': {default_stack: ci}}\n")
    with pytest.raises(BuildError, match=r"stacks.yaml: versions.2023.06: 'stacks' is a required property"):
        load_stacks(bad)


def test_stacks_default_stack_must_exist(tmp_path):
    bad = tmp_path / "stacks.yaml"
    bad.write_text(
        "schema_version: 1\nversions: {'2023.06': {default_stack: x, stacks: {ci: {easystack: a.yaml}}}}\n"
    )
    with pytest.raises(BuildError, match="default_stack: 'x' is not under `stacks`"):
        load_stacks(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("easyconfigs: []\n", "non-empty `easyconfigs:`"),
        ("easyconfigs: [foo.txt]\n", "is not an .eb file"),
        ("easyconfigs: [{a.eb: 3}]\n", "expected `NAME.eb"),
    ],
    ids=["empty", "not-eb", "bad-options"],
)
def test_easystack_invalid_is_refused(tmp_path, text, message):
    p = tmp_path / "es.yaml"
    p.write_text(text)
    with pytest.raises(BuildError, match=message):
        load_easystack(p)


def test_easystack_options_are_kept(tmp_path):
    p = tmp_path / "es.yaml"
    p.write_text("easyconfigs:\n  - a-1.eb\n  - b-2.eb:\n      options:\n        from-commit: abc\n")
    entries = load_easystack(p)
    assert [e.easyconfig for e in entries] == ["a-1.eb", "b-2.eb"]
    assert entries[1].options == (("from-commit", "abc"),)


def test_easyconfig_checksum_count_mismatch_is_refused(tmp_path):
    p = tmp_path / "x-1.eb"
    p.write_text("name = 'x'\nversion = '1'\nsources = ['a', 'b']\nchecksums = ['" + "0" * 64 + "']\n")
    with pytest.raises(BuildError, match="2 source\\(s\\) but 1 checksum"):
        parse_easyconfig(p)


def test_easyconfig_templates_resolve(tmp_path):
    p = tmp_path / "x-1.eb"
    p.write_text(
        "name = 'Foo'\nversion = '1.2'\nversionsuffix = '-s'\nsources = ['%(namelower)s-%(version)s%(versionsuffix)s.tgz']\n"
    )
    ec = parse_easyconfig(p)
    assert ec.sources[0].filename == "foo-1.2-s.tgz" and ec.module == "Foo/1.2-s" and ec.source_dir == "f/Foo"


def test_plan_sources_repo_first_then_named_provider(stacks):
    wanted = {w.filename: w for w in plan_sources(stacks.stack("2023.06", "full").easyconfigs, stacks)}
    assert [p.kind for p in wanted["hpcc.h"].providers] == ["repo"]
    assert [p.kind for p in wanted["hpcc_1.5.0.orig.tar.gz"].providers] == ["debian"]
    assert wanted["gsl_2.7.1+dfsg.orig.tar.gz"].subdir == "g/GSL"
    assert [p.kind for p in wanted[next(n for n in wanted if n.endswith(".whl"))].providers] == ["pypi"]


def test_pip_download_argv_pins_the_wheel_tags():
    argv = pip_download_argv(
        "numpy==1.25.1",
        "numpy-1.25.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        Path("/d"),
        python="py",
    )
    assert argv[:4] == ["py", "-m", "pip", "download"]
    joined = " ".join(argv)
    for part in (
        "--only-binary=:all:",
        "--abi cp311",
        "--python-version 3.11",
        "--implementation cp",
        "--platform manylinux_2_17_x86_64",
        "--platform manylinux2014_x86_64",
        "--no-deps",
    ):
        assert part in joined
    assert argv[-1] == "numpy==1.25.1"


def test_pip_download_argv_sdist_refuses_binaries():
    assert "--no-binary=:all:" in pip_download_argv("x==1", "x-1.tar.gz", Path("/d"))


def test_apt_argv_keeps_all_state_private(tmp_path):
    argv = apt_source_argv(tmp_path, "hpcc")
    assert argv[-3:] == ["source", "--download-only", "hpcc"]
    assert f"Dir::State::Lists={tmp_path}/lists" in argv and "Dir::Etc::SourceParts=/dev/null" in argv
    assert (
        apt_sources_list(DebianArchive("http://m/debian", "bookworm", ("main",)))
        == "deb-src http://m/debian bookworm main\n"
    )


def test_provision_unprovisionable_names_file_and_providers(tmp_path):
    w = Wanted(
        Path("matrices/easyconfigs/x/X/X-1.eb"),
        "x/X",
        "x-1.tar.gz",
        "0" * 64,
        (ProviderSpec("repo", str(tmp_path)),),
    )
    with pytest.raises(
        BuildError, match=r"X-1.eb: cannot provision source x-1.tar.gz .*providers tried: repo"
    ):
        Provisioner(tmp_path / "src", tmp_path / "st", DebianArchive("m", "s", ("main",))).provision((w,))


def test_provision_wrong_checksum_is_refused_and_right_one_placed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f.txt").write_text("hello\n")
    good = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    prov = Provisioner(tmp_path / "src", tmp_path / "st", DebianArchive("m", "s", ("main",)))
    with pytest.raises(BuildError, match=r"checksum 5891b5b5.* differs"):
        prov.provision((Wanted(Path("e.eb"), "f/F", "f.txt", "1" * 64, (ProviderSpec("repo", str(repo)),)),))
    got = prov.provision((Wanted(Path("e.eb"), "f/F", "f.txt", good, (ProviderSpec("repo", str(repo)),)),))
    assert got == {"f/F/f.txt": good} and (tmp_path / "src/f/F/f.txt").read_text() == "hello\n"


def _cfg(generic: bool, as_root: bool) -> EasyBuildConfig:
    return EasyBuildConfig(
        installpath="/cvmfs/r/versions/2023.06/software/linux/x86_64/generic",
        sourcepath=Path("/s/sources"),
        buildpath=Path("/s/b"),
        prefix=Path("/s/p"),
        robot_paths=(Path("/m/easyconfigs"),),
        hooks=HOOKS,
        generic=generic,
        as_root=as_root,
        system_cflags="-O2",
        python="/venv/bin/python",
    )


@pytest.mark.parametrize(
    ("generic", "as_root"), [(True, True), (False, False)], ids=["generic-root", "native-user"]
)
def test_eb_argv_configuration(generic, as_root):
    argv = eb_install_argv(_cfg(generic, as_root), Path("/m/ci.yaml"))
    assert argv[:3] == ["/venv/bin/python", "-m", "easybuild.main"]
    for opt in (
        "--installpath=/cvmfs/r/versions/2023.06/software/linux/x86_64/generic",
        "--sourcepath=/s/sources",
        "--buildpath=/s/b",
        "--modules-tool=Lmod",
        "--module-syntax=Lua",
        "--rpath",
        "--robot-paths=/m/easyconfigs",
        f"--hooks={HOOKS}",
        "--easystack=/m/ci.yaml",
        "--robot",
    ):
        assert opt in argv
    assert any(a.startswith("--filter-deps=") and "zlib" in a for a in argv)
    assert ("--optarch=GENERIC" in argv) is generic
    assert ("--allow-use-as-root-and-accept-consequences" in argv) is as_root
    assert eb_missing_argv(_cfg(generic, as_root), Path("/m/ci.yaml"))[-1] == "--missing"


def test_eb_environment_finds_lmod_and_drops_foreign_settings():
    env = eb_environment(
        _cfg(True, True), {"PATH": "/usr/bin", "EASYBUILD_PREFIX": "/x", "LOADEDMODULES": "a"}
    )
    assert env["PATH"].split(":")[0] == "/venv/bin" and env["LMOD_CMD"].endswith("/lmod")
    assert "EASYBUILD_PREFIX" not in env and "LOADEDMODULES" not in env
    assert env["MODULEPATH"].endswith("/x86_64/generic/modules/all")


@pytest.mark.parametrize(
    ("name", "generic", "expected"),
    [
        ("x86_64", True, "-O2 -march=x86-64 -mtune=generic"),
        ("zen4", False, "-O2 -march=znver3 -mtune=znver3 -mavx512f"),
        ("zen3", False, "-O2 -march=znver3 -mtune=znver3"),
    ],
    ids=["generic", "zen4", "zen3"],
)
def test_system_cflags_from_archspec(name, generic, expected):
    assert system_cflags(name, generic, "12.2.0").startswith(expected)


def test_missing_modules_parses_eb_missing_output():
    out = "== x\n1 out of 4 required modules missing:\n\n* GSL/2.7.1 (GSL-2.7.1.eb)\n\n== done\n"
    assert missing_modules(out) == ["GSL/2.7.1"]
    assert missing_modules("No missing modules!\n") == []


def test_overlay_wrap_mounts_at_the_repository_path(tmp_path):
    view = OverlayView("/cvmfs/software.eessi.local", tmp_path, tmp_path / "lower", python="py")
    argv = view.wrap(["eb", "--version"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[5:8] == ["py", "-I", "-S"] and argv[8].endswith("eessi_pipeline/nslaunch.py")
    spec = nslaunch.from_json(argv[9])
    assert spec == view.mounts()
    assert [(m.kind, m.target) for m in spec.mounts] == [
        ("bind", str(tmp_path / "stage")),
        ("tmpfs", "/cvmfs"),
        ("overlay", "/cvmfs/software.eessi.local"),
    ]
    assert spec.mounts[0].source == str(tmp_path / "lower")
    assert spec.mounts[2].upper == str(tmp_path / "upper") and not spec.mounts[2].fuse
    assert argv[-3:] == ["--", "eb", "--version"]


def test_overlay_without_a_mode_refuses_with_next_step(tmp_path):
    with pytest.raises(BuildError, match="needs root"):
        OverlayView("/cvmfs/r", tmp_path, tmp_path / "lower", mode=None).prepare()


def test_tarball_name_follows_eessi():
    assert (
        tarball_name("2023.06", "x86_64/amd/zen4", 17)
        == "eessi-2023.06-software-linux-x86_64-amd-zen4-17.tar.gz"
    )


def test_metadata_has_eessi_fields(tmp_path):
    t = tmp_path / "eessi-2023.06-software-linux-x86_64-generic-1.tar.gz"
    t.write_bytes(b"x")
    meta = metadata(t, {"GITHUB_RUN_ID": "9", "GITHUB_REPOSITORY": "o/r"})
    assert set(meta["payload"]) == {"filename", "size", "ctime", "sha256sum", "url"}
    assert set(meta["uploader"]) == {"username", "ip", "hostname"}
    assert meta["link2run"]["url"] == "https://github.com/o/r/actions/runs/9" and run_link({}) == ""
    json.dumps(meta)


def test_lmod_and_module_check_argv():
    assert lmod_cache_argv("/p")[1:] == [
        "-d",
        "/p/.lmod/cache",
        "-t",
        "/p/.lmod/cache/timestamp",
        "/p/modules/all",
    ]
    assert "export MODULEPATH=/p/modules/all" in module_check_argv("/p", "module load X")[2]


def test_inputs_digest_changes_with_inputs(stacks, matrix, tmp_path):
    plan = BuildPlan.create(matrix, stacks, matrix.target("x86_64_generic"), None, "r", tmp_path)
    assert plan.prefix == "/cvmfs/r/versions/2023.06/software/linux/x86_64/generic"
    assert inputs_digest({"a": 1}) != inputs_digest({"a": 2})


def test_cli_dry_run_prints_the_plan_without_side_effects(tmp_path):
    data = build_cli_json(
        ["--state-dir", str(tmp_path), "build", "--target", "x86_64_generic", "--dry-run", "--json"]
    )
    assert (
        data["prefix"].endswith("/software/linux/x86_64/generic")
        and "--optarch=GENERIC" in data["commands"]["eb"]
    )
    assert data["upper"].startswith(str(tmp_path)) and not any(tmp_path.iterdir())


def test_cli_refuses_a_target_this_host_cannot_build(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 63\n"
        "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma\n"
    )
    args = build_cli_parser().parse_args(
        ["build", "--target", "zen4", "--cpuinfo", str(cpuinfo), "--dry-run"]
    )
    with pytest.raises(Exception, match="zen4") as info:
        args.handler(args, io.StringIO())
    assert getattr(info.value, "exit_code", None) == 1


def test_eb_error_summary_names_the_failed_installation() -> None:
    from eessi_pipeline.software.driver import eb_error_summary

    output = (
        "WARNING: Using EasyBuild as root is NOT recommended, please proceed with care!\n"
        "\x1b[0;31mERROR: Shell command failed!\x1b[0m\n    exit code  ->  127\n"
        "ERROR: Installation of GSL-2.7.1.eb failed: shell command 'configure ...' failed with exit code 127\n"
        "(this is only allowed because EasyBuild was configured with --allow-use-as-root)\n"
    )
    assert eb_error_summary(output) == (
        "Installation of GSL-2.7.1.eb failed: shell command 'configure ...' failed with exit code 127"
    )
    assert eb_error_summary("no errors here\n") == "see the output below"
