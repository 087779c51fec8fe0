"""Build runtimes without running a build: the setting, the overlay modes, and the apptainer/singularity
container (definition written by spython, exec argv) — none of it needs the container program, which
this machine does not have; tests that would need it say so in their names."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from helpers import build_cli_json, build_cli_parser

from eessi_pipeline import nslaunch
from eessi_pipeline.errors import BuildError, UsageError
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.software.container import (
    ContainerView,
    build_definition,
    build_image,
    collapse_binds,
    container_environment,
    container_exec_argv,
    docker_reference,
    image_plan,
)
from eessi_pipeline.software.driver import BuildPlan, build_inputs
from eessi_pipeline.software.overlay import (
    OverlayMode,
    OverlayView,
    choose_overlay_mode,
    kernel_release,
    namespace_argv,
)
from eessi_pipeline.software.runtime import (
    DEFAULT_IMAGE,
    IMAGE_ENV,
    RUNTIME_ENV,
    Runtime,
    RuntimeChoice,
    require_binary,
    resolve_runtime,
)
from eessi_pipeline.software.stacks import load_stacks


def _none(_: str) -> None:
    return None


# --- the setting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cli", "env", "expected", "source"),
    [
        (None, {}, Runtime.NAMESPACE, "default"),
        (None, {RUNTIME_ENV: "apptainer"}, Runtime.APPTAINER, f"${RUNTIME_ENV}"),
        ("singularity", {RUNTIME_ENV: "apptainer"}, Runtime.SINGULARITY, "--runtime"),
        ("Apptainer", {}, Runtime.APPTAINER, "--runtime"),
        (None, {RUNTIME_ENV: ""}, Runtime.NAMESPACE, "default"),
    ],
    ids=["default", "environment", "cli-beats-environment", "case-insensitive", "empty-environment"],
)
def test_runtime_resolution_cli_then_environment_then_default(cli, env, expected, source):
    choice = resolve_runtime(cli, None, env)
    assert (choice.runtime, choice.source, choice.image) == (expected, source, DEFAULT_IMAGE)


def test_runtime_image_cli_then_environment_then_eessi_build_node():
    assert resolve_runtime(None, "a.sif", {IMAGE_ENV: "b.sif"}).image == "a.sif"
    assert resolve_runtime(None, None, {IMAGE_ENV: "b.sif"}).image == "b.sif"
    assert DEFAULT_IMAGE == "docker://ghcr.io/eessi/build-node:debian12"


@pytest.mark.parametrize(
    ("cli", "env"), [("docker", {}), (None, {RUNTIME_ENV: "podman"})], ids=["cli", "env"]
)
def test_runtime_unknown_is_a_usage_error_listing_the_valid_ones(cli, env):
    with pytest.raises(UsageError, match=r"use one of: namespace, apptainer, singularity") as info:
        resolve_runtime(cli, None, env)
    assert info.value.exit_code == 2
    assert ("--runtime" if cli else RUNTIME_ENV) in str(info.value)


@pytest.mark.parametrize("runtime", [Runtime.APPTAINER, Runtime.SINGULARITY], ids=lambda r: r.value)
def test_runtime_binary_absent_names_it_the_install_and_namespace(runtime):
    with pytest.raises(BuildError, match=rf"needs the `{runtime.value}` program.*--runtime namespace"):
        require_binary(RuntimeChoice(runtime, DEFAULT_IMAGE, "--runtime"), which=_none)


def test_runtime_namespace_needs_no_program():
    assert require_binary(RuntimeChoice(Runtime.NAMESPACE, DEFAULT_IMAGE, "default"), which=_none) is None


# --- overlay modes (namespace runtime) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("euid", "fuse", "dev_fuse", "release", "expected"),
    [
        (0, None, False, (4, 19), OverlayMode.KERNEL),
        (1000, "/usr/bin/fuse-overlayfs", True, (4, 19), OverlayMode.FUSE_USERNS),
        (1000, "/usr/bin/fuse-overlayfs", False, (6, 1), OverlayMode.KERNEL_USERNS),
        (1000, None, True, (5, 11), OverlayMode.KERNEL_USERNS),
        (1000, None, False, (5, 10), None),
    ],
    ids=[
        "root-kernel",
        "user-fuse",
        "user-dev-fuse-closed-new-kernel",
        "user-no-fuse-5.11",
        "user-old-kernel",
    ],
)
def test_overlay_mode_choice(euid, fuse, dev_fuse, release, expected):
    mode, reason = choose_overlay_mode(euid, fuse, dev_fuse, release)
    assert mode is expected and reason
    if expected is None:
        assert "apt-get install fuse-overlayfs" in reason and "5.10" in reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [("6.1.0-18-amd64", (6, 1)), ("5.11.0", (5, 11)), ("6.18.44-fc-v669", (6, 18)), ("weird", (0, 0))],
)
def test_kernel_release_parses_uname(text, expected):
    assert kernel_release(text) == expected


def test_overlay_fuse_mode_argv_is_a_user_namespace_with_fuse_overlayfs(tmp_path):
    view = OverlayView("/cvmfs/r.local", tmp_path, tmp_path / "lower", OverlayMode.FUSE_USERNS, python="py")
    argv = view.wrap(["eb", "--version"])
    assert argv[:7] == namespace_argv(OverlayMode.FUSE_USERNS)
    assert argv[:4] == ["unshare", "--user", "--map-root-user", "--mount"]
    assert nslaunch.from_json(argv[11]).mounts[2].fuse == "fuse-overlayfs"
    assert argv[-3:] == ["--", "eb", "--version"] and view.eb_sees_root


def test_overlay_kernel_mode_argv_has_no_user_namespace_and_no_fuse(tmp_path):
    argv = OverlayView("/cvmfs/r.local", tmp_path, tmp_path / "lower", python="py").wrap(["true"])
    assert "--user" not in argv and not nslaunch.from_json(argv[9]).mounts[2].fuse


@pytest.mark.parametrize(
    ("mode", "before", "after"),
    [
        (OverlayMode.KERNEL, {}, None),
        (OverlayMode.KERNEL_USERNS, {}, "--no-same-owner"),
        (OverlayMode.FUSE_USERNS, {"TAR_OPTIONS": "-v"}, "-v --no-same-owner"),
        (OverlayMode.FUSE_USERNS, {"TAR_OPTIONS": "--no-same-owner"}, "--no-same-owner"),
    ],
    ids=["root", "userns", "userns-keeps-options", "userns-once"],
)
def test_overlay_user_namespace_tar_keeps_no_owners(tmp_path, mode, before, after):
    env = OverlayView("/cvmfs/r", tmp_path, tmp_path / "lower", mode).environment({"PATH": "/bin", **before})
    assert env.get("TAR_OPTIONS") == after and env["PATH"] == "/bin"


def test_fuse_overlayfs_argv_stays_in_the_foreground():
    m = nslaunch.Mount("overlay", "/cvmfs/r", lower=("/s",), upper="/u", work="/w", fuse="fuse-overlayfs")
    assert nslaunch.fuse_overlayfs_argv(m) == [
        "fuse-overlayfs",
        "-f",
        "-o",
        "lowerdir=/s,upperdir=/u,workdir=/w",
        "/cvmfs/r",
    ]


# --- the build container (apptainer / singularity) -----------------------------------------------


def test_container_definition_without_binary_bootstraps_from_eessi_build_node():
    text = build_definition(DEFAULT_IMAGE)
    lines = text.splitlines()
    assert lines[:2] == ["Bootstrap: docker", "From: ghcr.io/eessi/build-node:debian12"]
    post = text.split("%post\n", 1)[1].split("\n%", 1)[0]
    assert "apt-get install -y --no-install-recommends" in post
    for pkg in ("fuse-overlayfs", "lmod", "build-essential", "python3"):
        assert f" {pkg}" in post
    assert "export LC_ALL=C.UTF-8" in text and "%test" in text


def test_container_definition_without_binary_round_trips_through_spythons_parser(tmp_path):
    from spython.main.parse.parsers import SingularityParser

    recipe_file = tmp_path / "build.def"
    recipe_file.write_text(build_definition("docker://debian:12"))
    parsed = SingularityParser(str(recipe_file)).recipe
    (stage,) = parsed.values()
    assert stage.fromHeader == "debian:12"
    assert any("fuse-overlayfs" in line for line in stage.install)


def test_container_definition_refuses_a_non_docker_base():
    with pytest.raises(BuildError, match="Bootstrap: docker"):
        docker_reference("library://x/y:z")
    assert docker_reference("debian:12") == "debian:12"


def test_container_image_plan_uses_a_sif_as_is_and_builds_one_per_base(tmp_path):
    assert image_plan("/images/b.sif", tmp_path) == (Path("/images/b.sif"), None)
    sif, base = image_plan(DEFAULT_IMAGE, tmp_path)
    assert base == DEFAULT_IMAGE and isinstance(sif, Path) and sif.parent == tmp_path
    assert sif.name.startswith("ghcr.io_eessi_build-node_debian12-") and sif.suffix == ".sif"
    assert image_plan("docker://debian:12", tmp_path)[0] != sif


def test_apptainer_argv_without_binary_mounts_fuse_overlayfs_at_the_repository(tmp_path):
    argv = container_exec_argv(
        "apptainer",
        "/s/build.sif",
        "/cvmfs/software.eessi.local",
        tmp_path / "lower",
        tmp_path / "upper",
        tmp_path / "work",
        ("/state", "/work/main"),
        ["python", "-m", "easybuild.main", "--robot"],
    )
    assert argv[:3] == ["apptainer", "exec", "--contain"]
    assert argv[argv.index("--fusemount") + 1] == (
        "container:fuse-overlayfs -o lowerdir=/cvmfs_ro/software.eessi.local,"
        f"upperdir={tmp_path}/upper,workdir={tmp_path}/work /cvmfs/software.eessi.local"
    )
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert binds == [f"{tmp_path}/lower:/cvmfs_ro/software.eessi.local:ro", "/state", "/work/main"]
    assert argv[-5:] == ["/s/build.sif", "python", "-m", "easybuild.main", "--robot"]


def test_singularity_environment_without_binary_passes_what_easybuild_needs():
    base = {"PATH": "/v/bin:/usr/bin", "MODULEPATH": "/m", "HOME": "/root"}
    env = container_environment(Runtime.SINGULARITY, base)
    assert env["SINGULARITYENV_PATH"] == "/v/bin:/usr/bin" and env["SINGULARITYENV_MODULEPATH"] == "/m"
    assert "SINGULARITYENV_HOME" not in env and env["HOME"] == "/root"
    assert "APPTAINERENV_PATH" in container_environment(Runtime.APPTAINER, base)


def test_container_binds_collapse_nested_paths():
    assert collapse_binds(["/work/main", "/work/main/.venv", "/state/build", "/state", "/a/"]) == (
        "/a",
        "/state",
        "/work/main",
    )


def test_container_image_build_without_binary_says_how_to_build_it(tmp_path):
    with pytest.raises(BuildError, match=r"`singularity` program.*apptainer build .*--image"):
        build_image("Bootstrap: docker\nFrom: debian:12\n", tmp_path / "b.sif", True, which=_none)
    assert not (tmp_path / "b.sif").exists()


def test_container_missing_sif_without_binary_is_refused(tmp_path):
    view = ContainerView(
        Runtime.APPTAINER,
        "apptainer",
        str(tmp_path / "none.sif"),
        "/cvmfs/r",
        tmp_path / "ovl",
        tmp_path / "ovl" / "lower",
        (),
        False,
        tmp_path / "container",
    )
    with pytest.raises(BuildError, match=r"none.sif does not exist"):
        view.prepare()


# --- the plan and the CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


@pytest.fixture(scope="module")
def stacks():
    return load_stacks()


def test_plan_container_view_without_binary_needs_it_only_to_run(matrix, stacks, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apptainer here (nor anywhere on this machine)
    choice = RuntimeChoice(Runtime.APPTAINER, DEFAULT_IMAGE, "--runtime")
    plan = BuildPlan.create(
        matrix,
        stacks,
        matrix.target("x86_64_generic"),
        None,
        "r.local",
        tmp_path,
        runtime=choice,
        stack_name="ci-hostlinked",  # the default stacks link to the layer: namespace runtime only
    )
    view = plan.view(require=False)
    assert isinstance(view, ContainerView) and view.wrap(["true"])[:2] == ["apptainer", "exec"]
    with pytest.raises(BuildError, match="needs the `apptainer` program"):
        plan.view()


def test_plan_runtime_enters_the_inputs_only_when_not_the_default(matrix, stacks, tmp_path):
    target = matrix.target("x86_64_generic")
    default = BuildPlan.create(matrix, stacks, target, None, "r", tmp_path)
    container = BuildPlan.create(
        matrix,
        stacks,
        target,
        None,
        "r",
        tmp_path,
        runtime=RuntimeChoice(Runtime.SINGULARITY, "x.sif", "--runtime"),
        stack_name="ci-hostlinked",
    )
    assert "runtime" not in build_inputs(default, {}, "5.4.1", "-O2")
    extra = build_inputs(container, {}, "5.4.1", "-O2")
    assert (extra["runtime"], extra["image"]) == ("singularity", "x.sif")


def test_cli_dry_run_apptainer_without_binary_shows_argv_and_definition(tmp_path, monkeypatch):
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    data = build_cli_json(
        [
            "--state-dir",
            str(tmp_path),
            "build",
            "--target",
            "x86_64_generic",
            *("--stack", "ci-hostlinked", "--runtime", "apptainer", "--dry-run", "--json"),
        ]
    )
    assert data["runtime"] == "apptainer" and data["runtime_from"] == "--runtime"
    assert data["commands"]["eb"].startswith("apptainer exec --contain ")
    assert "--fusemount 'container:fuse-overlayfs -o lowerdir=/cvmfs_ro/" in data["commands"]["eb"]
    assert data["container_definition"].startswith("Bootstrap: docker\nFrom: ghcr.io/eessi/build-node")
    assert data["image"].endswith(".sif") and not any(tmp_path.iterdir())


def test_cli_unknown_runtime_from_environment_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv(RUNTIME_ENV, "docker")
    args = build_cli_parser().parse_args(
        ["--state-dir", str(tmp_path), "build", "--target", "x86_64_generic"]
    )
    with pytest.raises(UsageError, match="unknown build runtime 'docker'") as info:
        args.handler(args, io.StringIO())
    assert info.value.exit_code == 2
