"""The toolchain of a stack is data: SYSTEM for the embedded CI stacks, EESSI's real toolchains
(foss-2023a, GCCcore-12.3.0) for the production stack, which EasyBuild resolves against its own shipped
easyconfigs.  The resolution tests run the real EasyBuild (``eb --robot --dry-run``) through the build
overlay; nothing is built and no source is fetched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import build_cli_json

from eessi_pipeline.errors import BuildError
from eessi_pipeline.matrix import PROJECT_ROOT, load_matrix
from eessi_pipeline.software.driver import BuildPlan, build_inputs, resolve_stack
from eessi_pipeline.software.easybuild import parse_dry_run
from eessi_pipeline.software.easyconfig import SYSTEM, parse_easyconfig
from eessi_pipeline.software.overlay import host_overlay_mode
from eessi_pipeline.software.stacks import easybuild_easyconfigs_dir, load_stacks

MATRICES = PROJECT_ROOT / "matrices"
PRODUCTION_MODULES = ("GCCcore/12.3.0", "foss/2023a", "zlib/1.2.13-GCCcore-12.3.0")


@pytest.fixture(scope="module")
def stacks():
    return load_stacks()


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def _stacks_file(tmp_path: Path, stack_yaml: str, targets: str = "{}") -> Path:
    """A stacks.yaml beside the real matrices (absolute paths) with one extra stack ``t``."""
    p = tmp_path / "stacks.yaml"
    p.write_text(
        "schema_version: 1\n"
        f"easyconfigs: {MATRICES / 'easyconfigs'}\n"
        f"repo_sources: {MATRICES / 'sources'}\n"
        "versions:\n"
        "  '2023.06':\n"
        "    default_stack: ci\n"
        "    stacks:\n"
        f"      ci: {{easystack: {MATRICES / 'easystacks/2023.06/ci.yaml'}}}\n"
        f"      t: {stack_yaml}\n"
        f"    targets: {targets}\n"
    )
    return p


def test_stacks_embedded_ones_are_system_with_the_project_robot_path_only(stacks):
    for name in ("ci", "full"):
        stack = stacks.stack("2023.06", name)
        assert stack.toolchain == SYSTEM and stack.embedded
        assert stack.robot_paths == (stacks.easyconfig_dir,)
        assert all(ec.toolchain == SYSTEM for ec in stack.easyconfigs)


def test_stacks_production_uses_eessi_toolchains_from_easybuilds_easyconfigs(stacks):
    stack = stacks.stack("2023.06", "production")
    shipped = easybuild_easyconfigs_dir()
    assert stack.toolchain == "foss-2023a" and not stack.embedded
    assert stack.robot_paths == (stacks.easyconfig_dir, shipped)
    assert stack.modules == PRODUCTION_MODULES
    assert all(ec.path.is_relative_to(shipped) and ec.sources == () for ec in stack.easyconfigs)
    assert [ec.toolchain for ec in stack.easyconfigs] == [SYSTEM, SYSTEM, "GCCcore-12.3.0"]


def test_stacks_production_keys_enter_the_build_inputs(stacks, matrix, tmp_path):
    target = matrix.target("x86_64_generic")
    prod = BuildPlan.create(matrix, stacks, target, None, "r", tmp_path, stack_name="production")
    ci = BuildPlan.create(matrix, stacks, target, None, "r", tmp_path)
    assert build_inputs(prod, {}, "5.4.1", "")["toolchain"] == "foss-2023a"
    assert "toolchain" not in build_inputs(ci, {}, "5.4.1", "")


def test_easyconfig_toolchain_names_the_module_like_easybuild(tmp_path):
    p = tmp_path / "zlib-1.2.13-GCCcore-12.3.0.eb"
    p.write_text(
        "name = 'zlib'\nversion = '1.2.13'\ntoolchain = {'name': 'GCCcore', 'version': '12.3.0'}\n"
        "sources = [SOURCELOWER_TAR_GZ]\nchecksums = [{'zlib-1.2.13.tar.gz': 'x'}]\n"
    )
    ec = parse_easyconfig(p, with_sources=False)
    assert (ec.toolchain, ec.module, ec.sources) == ("GCCcore-12.3.0", "zlib/1.2.13-GCCcore-12.3.0", ())


def test_easyconfig_toolchain_not_a_mapping_is_refused(tmp_path):
    p = tmp_path / "x-1.eb"
    p.write_text("name = 'x'\nversion = '1'\ntoolchain = ('GCC', '12')\n")
    with pytest.raises(BuildError, match="`toolchain` must be SYSTEM or"):
        parse_easyconfig(p)


def test_stacks_system_stack_with_a_toolchain_easyconfig_is_refused(tmp_path):
    es = tmp_path / "es.yaml"
    es.write_text("easyconfigs:\n  - zlib-1.2.13-GCCcore-12.3.0.eb\n")
    path = _stacks_file(tmp_path, f"{{easystack: {es}, robot: [project, easybuild]}}")
    with pytest.raises(
        BuildError, match=r"stacks.t: zlib-1.2.13-GCCcore-12.3.0.eb uses toolchain GCCcore-12.3.0"
    ):
        load_stacks(path).stack("2023.06", "t")


def test_stacks_toolchain_outside_the_robot_path_is_refused(tmp_path):
    path = _stacks_file(
        tmp_path, f"{{easystack: {MATRICES / 'easystacks/2023.06/ci.yaml'}, toolchain: foss-2023a}}"
    )
    with pytest.raises(BuildError, match=r"foss-2023a.eb is in none of its robot paths.*add `easybuild`"):
        load_stacks(path).stack("2023.06", "t")


def test_stacks_shipped_easyconfig_without_easybuild_robot_names_the_fix(tmp_path):
    es = tmp_path / "es.yaml"
    es.write_text("easyconfigs:\n  - foss-2023a.eb\n")
    path = _stacks_file(tmp_path, f"{{easystack: {es}, toolchain: foss-2023a}}")
    with pytest.raises(
        BuildError, match=r"foss-2023a.eb not found under .*add `easybuild` to the stack's `robot`"
    ):
        load_stacks(path).stack("2023.06", "t")


@pytest.mark.parametrize(
    ("stack_yaml", "message"),
    [
        ("{easystack: a.yaml, toolchain: 'foss 2023a'}", r"stacks.t.toolchain: 'foss 2023a' does not match"),
        ("{easystack: a.yaml, robot: [github]}", r"stacks.t.robot\[0\]: 'github' is not one of"),
        ("{easystack: a.yaml, robot: []}", r"stacks.t.robot: \[\] should be non-empty"),
    ],
    ids=["toolchain-with-space", "unknown-robot", "empty-robot"],
)
def test_stacks_schema_checks_toolchain_and_robot(tmp_path, stack_yaml, message):
    with pytest.raises(BuildError, match=message):
        load_stacks(_stacks_file(tmp_path, stack_yaml))


def test_parse_dry_run_keeps_build_order_and_installed_marks():
    out = (
        "Dry run: printing build status of easyconfigs and dependencies\n"
        " * [x] /e/g/GCCcore/GCCcore-12.3.0.eb (module: GCCcore/12.3.0)\n"
        " * [ ] /e/z/zlib/zlib-1.2.13-GCCcore-12.3.0.eb (module: zlib/1.2.13-GCCcore-12.3.0)\n"
        "Dry run: printing build status of easyconfigs and dependencies\n"
        " * [x] /e/g/GCCcore/GCCcore-12.3.0.eb (module: GCCcore/12.3.0)\n"
        " * [F] /e/f/foss/foss-2023a.eb (module: foss/2023a)\n"
    )
    graph = parse_dry_run(out)
    assert [(r.module, r.installed) for r in graph] == [
        ("GCCcore/12.3.0", True),
        ("zlib/1.2.13-GCCcore-12.3.0", False),
        ("foss/2023a", False),
    ]
    assert graph[1].easyconfig == "/e/z/zlib/zlib-1.2.13-GCCcore-12.3.0.eb" and parse_dry_run("") == ()


def test_cli_dry_run_of_a_target_assigned_to_the_production_stack(tmp_path):
    es = MATRICES / "easystacks/2023.06/production.yaml"
    stacks_file = _stacks_file(
        tmp_path,
        f"{{easystack: {es}, toolchain: foss-2023a, robot: [project, easybuild]}}",
        targets="{x86_64_generic: t}",
    )
    state = tmp_path / "state"
    data = build_cli_json(
        [
            "--state-dir",
            str(state),
            "build",
            "--target",
            "x86_64_generic",
            *("--stacks", str(stacks_file), "--runtime", "namespace", "--dry-run", "--json"),
        ]
    )
    shipped = easybuild_easyconfigs_dir()
    assert (data["stack"], data["toolchain"], tuple(data["modules"])) == (
        "t",
        "foss-2023a",
        PRODUCTION_MODULES,
    )
    assert data["robot_paths"] == [str(MATRICES / "easyconfigs"), str(shipped)]
    assert f"--robot-paths={MATRICES / 'easyconfigs'}:{shipped} " in data["commands"]["eb"]
    assert f"--easystack={es} --robot" in data["commands"]["eb"] and not state.exists()


needs_overlay = pytest.mark.skipif(
    host_overlay_mode()[0] is None, reason=f"no build overlay for this user: {host_overlay_mode()[1]}"
)


@needs_overlay
def test_production_stack_resolves_with_easybuilds_own_easyconfigs(stacks, matrix, tmp_path):
    before = sorted(os.listdir("/cvmfs")) if os.path.isdir("/cvmfs") else None
    plan = BuildPlan.create(
        matrix, stacks, matrix.target("x86_64_generic"), "2023.06", "software.eessi.local", tmp_path,
        stack_name="production",
    )  # fmt: skip
    graph = resolve_stack(plan)
    modules = [r.module for r in graph]
    for m in (
        *PRODUCTION_MODULES,
        "GCC/12.3.0",
        "OpenMPI/4.1.5-GCC-12.3.0",
        "gompi/2023a",
        "FFTW/3.3.10-GCC-12.3.0",
    ):
        assert m in modules
    assert modules.index("GCCcore/12.3.0") < modules.index("GCC/12.3.0") < modules.index("foss/2023a")
    assert not any(r.installed for r in graph)  # nothing of foss-2023a is in the empty repository
    shipped = str(easybuild_easyconfigs_dir())
    assert all(r.easyconfig.startswith(shipped) for r in graph)
    assert "zlib/1.2.13" not in modules  # filtered dependency (EESSI's filter-deps), not a graph node
    assert not (plan.target_dir / "resolve").exists()
    assert (sorted(os.listdir("/cvmfs")) if os.path.isdir("/cvmfs") else None) == before


@needs_overlay
def test_cli_resolve_prints_the_graph_of_the_production_stack(tmp_path):
    data = build_cli_json(
        [
            "--state-dir",
            str(tmp_path),
            "build",
            "--target",
            "x86_64_generic",
            *("--stack", "production", "--resolve", "--json"),
        ]
    )
    assert data["toolchain"] == "foss-2023a" and len(data["graph"]) > 30
    assert data["graph"][-1]["module"] == "zlib/1.2.13-GCCcore-12.3.0"


@needs_overlay
def test_ci_stack_resolves_inside_the_project_only(stacks, matrix, tmp_path):
    plan = BuildPlan.create(matrix, stacks, matrix.target("x86_64_generic"), "2023.06", "r.local", tmp_path)
    graph = resolve_stack(plan)
    assert [r.module for r in graph] == list(plan.stack.modules)
    assert all(r.easyconfig.startswith(str(stacks.easyconfig_dir)) for r in graph)
