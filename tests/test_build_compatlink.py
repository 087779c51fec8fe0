"""Linking a stack to the compatibility layer: the pure plan (which files, which edits, idempotence),
the patchelf script, the loader's account, the stack data, the plan's view and the CLI's dry run.

Two real but fast checks: patchelf applies a plan to a freshly compiled program and a second plan finds
nothing to do; the build view shows a directory read-only inside the overlay without creating anything in
the upper dir (root only, every overlay mode).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import build_cli_parser

from eessi_pipeline import nslaunch
from eessi_pipeline.compat.elf import ET_DYN, ET_EXEC, ElfInfo, read_elf
from eessi_pipeline.compat.ldlist import Listing, parse_list_output
from eessi_pipeline.compat.relocate import ElfFile
from eessi_pipeline.errors import BuildError
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.software.compatlink import (
    LayerLink,
    LinkEdit,
    WheelInstall,
    expand_origin,
    list_argv,
    listing_problems,
    patchelf_argvs,
    patchelf_script,
    plan_links,
    record_paths,
    scan_installations,
    scan_wheels,
    search_dirs,
    wheel_tags,
)
from eessi_pipeline.software.driver import BuildPlan, build_inputs
from eessi_pipeline.software.overlay import FUSE_OVERLAYFS, KERNEL_USERNS_OVERLAY, OverlayMode, OverlayView
from eessi_pipeline.software.overlay import kernel_release as _release
from eessi_pipeline.software.runtime import DEFAULT_IMAGE, Runtime, RuntimeChoice
from eessi_pipeline.software.stacks import load_stacks

REPO = "/cvmfs/r.eessi.local"
PREFIX = f"{REPO}/versions/2023.06/compat/linux/x86_64"
SW = "versions/2023.06/software/linux/x86_64/generic/software"
LAYER = LayerLink(
    prefix=PREFIX,
    staging=Path("/state/compat/versions/2023.06/compat/linux/x86_64"),
    loader=f"{PREFIX}/lib64/ld-linux-x86-64.so.2",
    library_dirs=(f"{PREFIX}/lib/x86_64-linux-gnu", f"{PREFIX}/usr/lib/x86_64-linux-gnu"),
    identity="abc",
)
COMPAT_DIRS = ":".join(LAYER.library_dirs)
INSTALL_RPATH = f"{REPO}/{SW}/STREAM/5.10/lib:$ORIGIN:$ORIGIN/../lib"


def _elf(
    rel: str,
    *,
    exe: bool = True,
    needed: tuple[str, ...] = ("libc.so.6",),
    rpath: str = "",
    runpath: str = "",
    interp: str | None = "/lib64/ld-linux-x86-64.so.2",
    dynamic: bool = True,
    soname: str | None = None,
) -> ElfFile:
    info = ElfInfo(
        elf_type=ET_DYN if not exe else ET_EXEC,
        machine=62,
        interpreter=interp if exe else None,
        needed=needed,
        soname=soname,
        runpath=tuple(p for p in runpath.split(":") if p),
        rpath=tuple(p for p in rpath.split(":") if p),
        dynamic=dynamic,
    )
    return ElfFile(rel, info)


STREAM = _elf(f"{SW}/STREAM/5.10/bin/stream", needed=("libgomp.so.1", "libc.so.6"), rpath=INSTALL_RPATH)
LIBZ = _elf(
    f"{SW}/zlib/1.2.13/lib/libz.so.1.2.13",
    exe=False,
    rpath=f"{REPO}/{SW}/zlib/1.2.13/lib:$ORIGIN",
    soname="libz.so.1",
)
NUMPY_SO = _elf(
    f"{SW}/SciPy-bundle/2023.07/lib/python3.11/site-packages/numpy/core/_umath.so",
    exe=False,
    rpath="$ORIGIN/../../numpy.libs",
    needed=("libopenblas.so", "libc.so.6"),
)
NUMPY_WHEEL = WheelInstall(
    f"{SW}/SciPy-bundle/2023.07/lib/python3.11/site-packages/numpy-1.25.1.dist-info",
    ("cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-manylinux2014_x86_64"),
    frozenset({NUMPY_SO.rel}),
)


def _linked(elf: ElfFile, edit: LinkEdit) -> ElfFile:
    """``elf`` as patchelf leaves it after ``edit``."""
    info = elf.info
    parts = tuple(edit.runpath.split(":")) if edit.runpath else None
    return ElfFile(
        elf.rel,
        ElfInfo(
            info.elf_type,
            info.machine,
            edit.interpreter or info.interpreter,
            info.needed,
            info.soname,
            info.runpath if parts is None or edit.rpath_tag else parts,
            parts if parts is not None and edit.rpath_tag else info.rpath,
            info.dynamic,
        ),
    )


# -- the plan ------------------------------------------------------------------------------------------------


def test_plan_executable_gets_the_layer_loader_and_its_dirs_after_its_own_rpath():
    plan = plan_links([STREAM], REPO, LAYER)
    (edit,) = plan.edits
    assert edit.interpreter == LAYER.loader
    assert edit.runpath == f"{INSTALL_RPATH}:{COMPAT_DIRS}"
    assert edit.rpath_tag  # EasyBuild's DT_RPATH stays DT_RPATH
    assert plan.files == (STREAM.rel,) and not plan.problems and not plan.skipped


def test_plan_shared_object_gets_the_dirs_but_no_interpreter():
    (edit,) = plan_links([LIBZ], REPO, LAYER).edits
    assert edit.interpreter is None and edit.runpath == f"{REPO}/{SW}/zlib/1.2.13/lib:$ORIGIN:{COMPAT_DIRS}"


@pytest.mark.parametrize(
    ("runpath", "rpath", "expected", "tag"),
    [
        ("", "", COMPAT_DIRS, False),
        ("$ORIGIN/../lib", "", f"$ORIGIN/../lib:{COMPAT_DIRS}", False),
        ("", "$ORIGIN", f"$ORIGIN:{COMPAT_DIRS}", True),
        ("/a", "/b", f"/a:{COMPAT_DIRS}", False),  # the loader ignores DT_RPATH beside DT_RUNPATH
    ],
    ids=["no-search-path", "runpath-kept-first", "rpath-kept-as-rpath", "runpath-wins-over-rpath"],
)
def test_plan_runpath_keeps_existing_entries_first(runpath, rpath, expected, tag):
    (edit,) = plan_links([_elf(f"{SW}/x/1/bin/x", runpath=runpath, rpath=rpath)], REPO, LAYER).edits
    assert (edit.runpath, edit.rpath_tag) == (expected, tag)


@pytest.mark.parametrize(
    ("elf", "reason"),
    [
        (_elf(f"{SW}/s/1/bin/static", interp=None, needed=(), dynamic=False), "statically linked"),
        (_elf(f"{SW}/g/1/lib/libc.so.6", exe=False, soname="libc.so.6"), "loader or C library"),
        (_elf(f"{SW}/g/1/lib/ld-linux-x86-64.so.2", exe=False, needed=()), "loader or C library"),
        (_elf(f"{SW}/d/1/lib/libdata.so", exe=False, needed=()), "needs no library"),
    ],
    ids=["static", "libc-copy", "loader-copy", "no-needed"],
)
def test_plan_leaves_files_alone_with_the_reason(elf, reason):
    plan = plan_links([elf], REPO, LAYER)
    assert not plan.edits and len(plan.skipped) == 1 and reason in plan.skipped[0][1]


def test_plan_links_files_of_a_manylinux_wheel_too():
    """They are imported by the layer's python3: their own needs must not fall to the host's ld.so.cache."""
    (edit,) = plan_links([NUMPY_SO], REPO, LAYER).edits
    assert edit.interpreter is None and edit.runpath is not None
    assert edit.runpath.endswith(":".join(LAYER.library_dirs))
    assert NUMPY_WHEEL.platform_wheel
    musl = WheelInstall("y.dist-info", ("cp311-cp311-musllinux_1_1_x86_64",), frozenset())
    assert musl.platform_wheel


def test_plan_is_idempotent_on_linked_files():
    first = plan_links([STREAM, LIBZ, NUMPY_SO], REPO, LAYER)
    assert len(first.edits) == 3
    by_rel = {e.rel: e for e in first.edits}
    linked = [_linked(e, by_rel[e.rel]) for e in (STREAM, LIBZ, NUMPY_SO)]
    second = plan_links(linked, REPO, LAYER)
    assert not second.edits and set(second.linked) == {STREAM.rel, LIBZ.rel, NUMPY_SO.rel}
    assert second.files == first.files and second.skipped == first.skipped


def test_plan_reports_a_library_only_the_host_has():
    stream_dir = f"{REPO}/{SW}/STREAM/5.10"
    index = {
        LAYER.library_dirs[0]: frozenset({"libc.so.6"}),
        LAYER.library_dirs[1]: frozenset(),
        f"{stream_dir}/lib": frozenset(),
        f"{stream_dir}/bin": frozenset(),
    }
    plan = plan_links([STREAM], REPO, LAYER, index=index)
    (problem,) = plan.problems
    assert "libgomp.so.1" in problem and f"{stream_dir}/bin/stream" in problem and "host" in problem
    # found through $ORIGIN/../lib (the installation's own lib dir), or in the layer: no problem
    for where in (f"{stream_dir}/lib", LAYER.library_dirs[1]):
        fixed = {**index, where: frozenset({"libgomp.so.1"})}
        assert not plan_links([STREAM], REPO, LAYER, index=fixed).problems


def test_search_dirs_expand_origin_then_add_the_layer():
    at = f"{REPO}/{SW}/STREAM/5.10/bin/stream"
    assert search_dirs(at, STREAM.info, LAYER) == (
        f"{REPO}/{SW}/STREAM/5.10/lib",
        f"{REPO}/{SW}/STREAM/5.10/bin",
        *LAYER.library_dirs,
    )
    assert expand_origin("${ORIGIN}/../lib64", "/a/bin") == "/a/lib64"
    assert expand_origin("relative/dir", "/a") == "relative/dir"


# -- patchelf and the loader's account ---------------------------------------------------------------------


def test_patchelf_argvs_group_equal_edits_and_force_rpath_only_where_the_file_had_it():
    edits = [
        LinkEdit("a", LAYER.loader, "$ORIGIN:/x", True),
        LinkEdit("b", LAYER.loader, "$ORIGIN:/x", True),
        LinkEdit("c", None, "/y", False),
    ]
    argvs = patchelf_argvs(edits, "/pe", REPO)
    files = [f"{REPO}/a", f"{REPO}/b"]
    assert argvs == [
        ["/pe", "--set-rpath", "/y", f"{REPO}/c"],
        ["/pe", "--set-interpreter", LAYER.loader, "--force-rpath", "--set-rpath", "$ORIGIN:/x", *files],
    ]
    script = patchelf_script(edits, "/pe", REPO)
    assert script.startswith("set -e\n") and "'$ORIGIN:/x'" in script  # quoted: no shell expansion


LISTING = f"""@@ELF /r/bin/ok
\tlinux-vdso.so.1 (0x00007ffd)
\tlibc.so.6 => {PREFIX}/lib/x86_64-linux-gnu/libc.so.6 (0x00007f01)
\t{LAYER.loader} (0x00007f02)
@@RC 0
@@ELF /r/bin/leaky
\tlibgomp.so.1 => /usr/lib/x86_64-linux-gnu/libgomp.so.1 (0x00007f03)
\tlibfoo.so.1 => not found
@@RC 0
@@ELF /r/bin/broken
{LAYER.loader}: /r/bin/broken: version `GLIBC_2.99' not found
@@RC 127
"""


def test_parse_list_output_and_problems():
    listings = parse_list_output(LISTING)
    assert listings["/r/bin/ok"] == Listing(
        0,
        (
            ("libc.so.6", f"{PREFIX}/lib/x86_64-linux-gnu/libc.so.6"),
            ("ld-linux-x86-64.so.2", LAYER.loader),
        ),
        listings["/r/bin/ok"].text,
    )
    allowed = (PREFIX, f"{REPO}/versions/2023.06/software/linux/x86_64/generic")
    assert listing_problems(listings, ["/r/bin/ok"], allowed) == []
    problems = listing_problems(listings, ["/r/bin/leaky", "/r/bin/broken", "/r/bin/gone"], allowed)
    assert len(problems) == 4
    assert "libgomp.so.1 => /usr/lib/x86_64-linux-gnu/libgomp.so.1, outside" in problems[0]
    assert "libfoo.so.1 not found" in problems[1]
    assert "GLIBC_2.99" in problems[2] and "not listed" in problems[3]


def test_list_argv_runs_the_layer_loader_from_the_layer_bash():
    argv = list_argv(LAYER, ["/f1", "/f2"])
    assert argv[0] == f"{PREFIX}/bin/bash" and argv[-3:] == [LAYER.loader, "/f1", "/f2"]


def test_wheel_tags_and_record_paths():
    assert wheel_tags("Wheel-Version: 1.0\nTag: cp311-cp311-manylinux_2_17_x86_64\nTag: x-y-z\n") == (
        "cp311-cp311-manylinux_2_17_x86_64",
        "x-y-z",
    )
    record = 'numpy/a.so,sha256=x,1\n"numpy/b,c.so",sha256=y,2\n../../../bin/f2py,,\n'
    assert record_paths(record) == ("numpy/a.so", "numpy/b,c.so", "../../../bin/f2py")


needs_tools = pytest.mark.skipif(
    not (shutil.which("gcc") and shutil.which("patchelf")), reason="needs gcc and patchelf"
)


@needs_tools
def test_patchelf_applies_the_plan_and_a_second_plan_finds_nothing(tmp_path):
    """A real program: linked to a 'layer' that is this host's own loader under its other path."""
    loader = "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    if not os.path.exists(loader) or os.uname().machine != "x86_64":
        pytest.skip("needs Debian's x86_64 loader path")
    layer = LayerLink("/lib", Path("/lib"), loader, ("/lib/x86_64-linux-gnu",), "host")
    sw = tmp_path / "sw" / "hello" / "1" / "bin"
    sw.mkdir(parents=True)
    (tmp_path / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hello");return 0;}\n')
    flags = ["-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/../lib"]  # as EasyBuild's RPATH wrappers
    subprocess.run(["gcc", "-o", str(sw / "hello"), str(tmp_path / "hello.c"), *flags], check=True)
    wheels = scan_wheels(tmp_path, "sw")
    elves = scan_installations(tmp_path, "sw", "x86_64")
    assert [e.rel for e in elves] == ["sw/hello/1/bin/hello"] and wheels == []
    plan = plan_links(elves, str(tmp_path), layer)
    for argv in patchelf_argvs(plan.edits, "patchelf", str(tmp_path)):
        subprocess.run(argv, check=True)
    info = read_elf(sw / "hello")
    assert info is not None and info.interpreter == loader
    assert info.rpath == ("$ORIGIN/../lib", "/lib/x86_64-linux-gnu") and not info.runpath
    assert subprocess.run([str(sw / "hello")], capture_output=True, text=True).stdout == "hello\n"
    again = plan_links(scan_installations(tmp_path, "sw", "x86_64"), str(tmp_path), layer)
    assert not again.edits and again.linked == ("sw/hello/1/bin/hello",)


# -- the stack data, the plan, the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stacks():
    return load_stacks()


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def test_default_stacks_link_to_the_layer_and_only_ci_hostlinked_does_not(stacks, matrix):
    compat, host = stacks.stack("2023.06", "ci"), stacks.stack("2023.06", "ci-hostlinked")
    assert compat.compat_layer and not host.compat_layer
    assert compat.easystack == host.easystack and compat.modules == host.modules
    assert (
        stacks.stack("2023.06", "full").compat_layer
        and not stacks.stack("2023.06", "production").compat_layer
    )
    for version in ("2023.06", "2025.06"):  # every target's default stack runs on the layer
        assert all(stacks.stack_for(version, t).compat_layer for t in matrix.targets_for(version))


def test_stacks_compat_layer_must_be_a_boolean(tmp_path):
    stacks_path = load_stacks().path
    bad = stacks_path.read_text().replace("compat_layer: true", "compat_layer: sometimes")
    (tmp_path / "stacks.yaml").write_text(bad)
    for sub in ("easystacks", "easyconfigs", "sources"):
        (tmp_path / sub).symlink_to(stacks_path.parent / sub)
    with pytest.raises(BuildError, match="compat_layer"):
        load_stacks(tmp_path / "stacks.yaml")


def test_plan_of_a_compat_stack_shows_the_layer_in_its_view_and_digest(stacks, matrix, tmp_path):
    target = matrix.target("x86_64_generic")
    plan = BuildPlan.create(matrix, stacks, target, "2023.06", "r.eessi.local", tmp_path, stack_name="ci")
    spec = plan.compat_spec
    assert spec is not None and spec.prefix == PREFIX and spec.staging.is_relative_to(tmp_path / "compat")
    view = plan.view()
    assert isinstance(view, OverlayView) and view.binds == ((str(spec.staging), spec.prefix),)
    inputs = build_inputs(plan, {}, "5.4.1", "-O2", "layer-digest")
    assert inputs["compat_layer"]["layer"] == "layer-digest" and inputs["compat_layer"]["prefix"] == PREFIX
    plain = BuildPlan.create(
        matrix, stacks, target, "2023.06", "r.eessi.local", tmp_path, stack_name="ci-hostlinked"
    )
    assert plain.compat_spec is None and "compat_layer" not in build_inputs(plain, {}, "5.4.1", "-O2")
    shared = BuildPlan.create(
        matrix, stacks, target, "2023.06", "r", tmp_path, stack_name="ci", compat_state=tmp_path / "c"
    )
    assert shared.compat_spec is not None and shared.compat_spec.state_dir == tmp_path / "c"


def test_plan_of_a_compat_stack_refuses_a_container_runtime(stacks, matrix, tmp_path):
    choice = RuntimeChoice(Runtime.APPTAINER, DEFAULT_IMAGE, "--runtime")
    with pytest.raises(BuildError, match="--runtime namespace"):
        BuildPlan.create(
            matrix, stacks, matrix.target("x86_64_generic"), "2023.06", "r", tmp_path,
            stack_name="ci", runtime=choice,
        )  # fmt: skip


def test_overlay_view_with_bind_mounts_it_after_the_overlay_over_a_skeleton(tmp_path):
    view = OverlayView(REPO, tmp_path, tmp_path / "lower").with_bind(tmp_path / "layer", PREFIX)
    argv = view.wrap(["true"])
    spec = nslaunch.from_json(argv[argv.index("--", 5) - 1])
    overlay, bind = spec.mounts[2:]
    assert overlay.lower == (str(tmp_path / "stage"), str(tmp_path / "mounts"))
    assert bind == nslaunch.Mount("bind", PREFIX, source=str(tmp_path / "layer"), readonly=True)
    assert argv[-2:] == ["--", "true"]
    assert "read-only from" in view.describe()
    plain = OverlayView(REPO, tmp_path, tmp_path / "lower").mounts()
    assert plain.mounts[2].lower == (str(tmp_path / "stage"),) and len(plain.mounts) == 3


def test_overlay_view_refuses_a_bind_outside_the_cover(tmp_path):
    (tmp_path / "layer").mkdir()
    view = OverlayView(REPO, tmp_path, tmp_path / "lower").with_bind(tmp_path / "layer", "/opt/layer")
    with pytest.raises(BuildError, match="not below /cvmfs"):
        view.prepare()
    missing = OverlayView(REPO, tmp_path, tmp_path / "lower").with_bind(tmp_path / "none", PREFIX)
    with pytest.raises(BuildError, match="does not exist"):
        missing.prepare()


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_dry_run_says_the_stack_links_to_the_layer(tmp_path, as_json):
    argv = ["--state-dir", str(tmp_path), "build", "--target", "x86_64_generic", "--stack", "ci"]
    args = build_cli_parser().parse_args([*argv, "--dry-run", *(["--json"] if as_json else [])])
    out = io.StringIO()
    assert args.handler(args, out) == 0
    if as_json:
        data = json.loads(out.getvalue())
        assert data["compat_layer"]["prefix"].endswith("/versions/2023.06/compat/linux/x86_64")
        assert list(data["commands"]) == ["compat_layer", "eb", "link", "lmod_cache"]
        assert '"kind":"bind","target":"/cvmfs/' in data["commands"]["eb"]
        assert '"readonly":true' in data["commands"]["eb"]
    else:
        assert "links to the compatibility layer at /cvmfs/" in out.getvalue()
    assert not any(tmp_path.iterdir())


# -- the view for real (root) ------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting the overlay in every mode needs root")
@pytest.mark.parametrize("mode", list(OverlayMode), ids=lambda m: m.name.lower())
def test_overlay_bind_is_read_only_at_its_prefix_and_leaves_upper_clean(tmp_path, mode):
    if mode is OverlayMode.FUSE_USERNS and shutil.which(FUSE_OVERLAYFS) is None:
        pytest.skip("fuse-overlayfs is not installed")
    if mode.user_namespace and _release(os.uname().release) < KERNEL_USERNS_OVERLAY:
        pytest.skip("kernel older than 5.11")
    repo = "/cvmfs/bind.eessi.local"
    layer = tmp_path / "layer"
    (layer / "bin").mkdir(parents=True)
    (layer / "bin" / "tool").write_text("layer file\n")
    (tmp_path / "lower").mkdir()
    at = f"{repo}/versions/2023.06/compat/linux/x86_64"
    fuse = shutil.which(FUSE_OVERLAYFS) or ""
    view = OverlayView(repo, tmp_path, tmp_path / "lower", mode, fuse_overlayfs=fuse).with_bind(layer, at)
    script = (
        f"cat {at}/bin/tool; touch {at}/bin/new 2>/dev/null && echo WRITABLE; "
        f"mkdir -p {repo}/versions/2023.06/software && echo sw > {repo}/versions/2023.06/software/f"
    )
    result = view.run(["sh", "-c", script], timeout=60)
    assert result.stdout == "layer file\n"
    assert not (layer / "bin" / "new").exists()
    in_upper = (p.relative_to(view.upper).as_posix() for p in view.upper.rglob("*"))
    assert sorted(p for p in in_upper if ".wh." not in p) == [  # fuse-overlayfs marks new dirs opaque
        "versions",
        "versions/2023.06",
        "versions/2023.06/software",
        "versions/2023.06/software/f",
    ]
    assert not os.path.exists(repo)


def test_plan_gives_a_library_without_search_path_its_siblings_first():
    """numpy.libs/libopenblas needs libgfortran beside it and has no RPATH of its own (the importing module's
    DT_RPATH finds it); linked, it gets $ORIGIN before the layer, so its sibling still wins."""
    libs = f"{SW}/SciPy-bundle/2023.07/lib/python3.11/site-packages/numpy.libs"
    blas = _elf(f"{libs}/libopenblas.so", exe=False, needed=("libgfortran-1.so.5", "libpthread.so.0"))
    index = {
        f"{REPO}/{libs}": frozenset({"libgfortran-1.so.5"}),
        LAYER.library_dirs[0]: frozenset({"libpthread.so.0"}),
    }
    plan = plan_links([blas], REPO, LAYER, index=index)
    (edit,) = plan.edits
    assert edit.runpath == ":".join(["$ORIGIN", *LAYER.library_dirs]) and not edit.rpath_tag
    assert plan.problems == ()
    missing = plan_links([blas], REPO, LAYER, index={LAYER.library_dirs[0]: frozenset({"libpthread.so.0"})})
    assert len(missing.problems) == 1 and "libgfortran-1.so.5" in missing.problems[0]
    assert not plan_links([_linked(blas, edit)], REPO, LAYER).edits  # idempotent
