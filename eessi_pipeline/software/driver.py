"""Build one target's stack: provision sources, run EasyBuild through the overlay, link the new files to
the compatibility layer (stacks with ``compat_layer: true``), update Lmod's cache, check nothing is
missing, pack the tarball — or reuse the last build when its inputs are unchanged.

State (under ``<state dir>/build/``): ``sources/`` (EasyBuild's sourcepath, shared), ``fetch/`` (private
apt state, downloads), and per target ``<version>/<subdir with ->/``: ``overlay/{lower,stage,upper,work}``,
``eb/`` (buildpath, prefix with EasyBuild's logs), ``tarballs/``, ``record.json`` (written last) and
``record.lock`` (an ``flock``: one builder at a time; xdist workers wait, then reuse).

Where EasyBuild runs is the plan's runtime (:mod:`eessi_pipeline.software.runtime`): the overlay in a
private namespace on this host (default), or EESSI's build container through apptainer/singularity.
A stack linked to the compatibility layer builds (or reuses) the family's layer first, in the same state
dir as ``eessi-pipeline compat build`` (``<state>/compat``), and sees it read-only at its prefix in the
namespace (:mod:`eessi_pipeline.software.compatlink`); only the namespace runtime can do that.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compat.layout import LayerSpec
from ..errors import BuildError, CompatError
from ..fileio import file_sha256
from ..matrix import Matrix, Target
from ..proc import CommandFailed, run
from . import compatlink, layertools, lmodfiles
from .container import ContainerView
from .easybuild import (
    HOOKS,
    LMOD_INIT,
    EasyBuildConfig,
    Resolved,
    eb_environment,
    eb_install_argv,
    eb_missing_argv,
    eb_resolve_argv,
    installed_easybuild_version,
    missing_modules,
    parse_dry_run,
    system_cflags,
)
from .overlay import OverlayView
from .runtime import DEFAULT_IMAGE, BuildView, Runtime, RuntimeChoice, require_binary
from .sources import Provisioner, plan_sources
from .stacks import Stack, StackConfig
from .tarball import pack

log = logging.getLogger(__name__)

EB_TIMEOUT = 3600.0
RECORD_FORMAT = 1
UPDATE_CACHE = "/usr/share/lmod/lmod/libexec/update_lmod_system_cache_files"
RESOLVE_TIMEOUT = 600.0
NAMESPACE_RUNTIME = RuntimeChoice(Runtime.NAMESPACE, DEFAULT_IMAGE, "default")


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """Everything a build of one target decides before running anything (pure)."""

    target: Target
    version: str
    repository: str
    stack: Stack
    state: Path
    prefix: str  # /cvmfs/<repo>/versions/<v>/software/linux/<subdir>
    runtime: RuntimeChoice = NAMESPACE_RUNTIME
    compat_state: Path | None = None  # state dir of the compatibility layer (None: the build's own)

    @classmethod
    def create(
        cls,
        matrix: Matrix,
        stacks: StackConfig,
        target: Target,
        version: str | None,
        repository: str,
        state: Path,
        *,
        stack_name: str | None = None,
        runtime: RuntimeChoice = NAMESPACE_RUNTIME,
        compat_state: Path | None = None,
    ) -> BuildPlan:
        """``stack_name`` overrides the stack that ``stacks.yaml`` assigns to the target; ``compat_state``
        is where a stack with ``compat_layer: true`` finds its layer (default: ``state``)."""
        ver = matrix.version(version).name
        if ver not in target.versions:
            raise BuildError(
                f"{target.name} is not a target of stack version {ver}; pick another target or version"
            )
        prefix = f"/cvmfs/{repository}/versions/{ver}/software/linux/{target.subdir}"
        stack = stacks.stack(ver, stack_name, target.family) if stack_name else stacks.stack_for(ver, target)
        if stack.compat_layer and runtime.runtime is not Runtime.NAMESPACE:
            raise BuildError(
                f"stack {stack.name} links to the compatibility layer, which only the namespace runtime "
                f"shows at its prefix during the build (not {runtime.runtime.value}, from {runtime.source}); "
                "build it with `--runtime namespace`"
            )
        return cls(target, ver, repository, stack, state / "build", prefix, runtime, compat_state)

    @property
    def compat_spec(self) -> LayerSpec | None:
        """The compatibility layer the stack links to (None: the stack keeps the host's loader and libc)."""
        if not self.stack.compat_layer:
            return None
        state = self.compat_state if self.compat_state is not None else self.state.parent
        try:
            return LayerSpec.create(self.version, self.target.family, state, repository=self.repository)
        except CompatError as e:
            raise BuildError(f"stack {self.stack.name} links to the compatibility layer, but {e}") from e

    @property
    def compat_prefix(self) -> str | None:
        """Where the stack's compatibility layer is at run time (None: the host's loader and libc)."""
        spec = self.compat_spec
        return spec.prefix if spec is not None else None

    @property
    def layer_tools(self) -> bool:
        """Does EasyBuild compile with the compatibility layer's gcc and Python (a stack of another CPU
        family than this host's, run under emulation; :mod:`eessi_pipeline.software.layertools`)?"""
        return self.stack.compat_layer and layertools.layer_compiles(self.target.family, os.uname().machine)

    @property
    def target_dir(self) -> Path:
        return self.state / self.version / self.target.subdir.replace("/", "-")

    @property
    def sourcepath(self) -> Path:
        return self.state / "sources"

    def view(self, root: Path | None = None, *, require: bool = True, layer: bool = True) -> BuildView:
        """``/cvmfs/<repo>`` writable for this plan's runtime; ``root`` holds its overlay directories.

        ``require``: a container runtime's program must exist (a :class:`BuildError` says how to get it);
        without it (``--dry-run``) the program's name stands in for its path.  ``layer=False`` leaves the
        compatibility layer out of the view (EasyBuild's dependency resolution does not run anything).
        """
        root = root or self.target_dir / "overlay"
        if self.runtime.runtime is Runtime.NAMESPACE:
            view = OverlayView.for_repository(self.repository, root)
            compat = self.compat_spec if layer else None
            return view.with_bind(compat.staging, compat.prefix) if compat is not None else view
        binary = require_binary(self.runtime) if require else None
        return ContainerView.create(
            self.runtime, binary or self.runtime.runtime.value, self.repository, root, self.state
        )

    def eb_config(self, gcc_version: str, as_root: bool) -> EasyBuildConfig:
        return EasyBuildConfig(
            installpath=self.prefix,
            sourcepath=self.sourcepath,
            buildpath=self.target_dir / "eb" / "build",
            prefix=self.target_dir / "eb" / "prefix",
            robot_paths=self.stack.robot_paths,
            hooks=HOOKS,
            generic=self.target.is_generic,
            as_root=as_root,
            system_cflags=system_cflags(self.target.archspec, self.target.is_generic, gcc_version),
        )


@dataclass(frozen=True, slots=True)
class BuildResult:
    plan: BuildPlan
    tarball: Path
    meta: Path
    reused: bool
    seconds: float
    inputs_digest: str
    overlay: BuildView

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.plan.target.name,
            "version": self.plan.version,
            "prefix": self.plan.prefix,
            "modules": list(self.plan.stack.modules),
            "tarball": str(self.tarball),
            "meta": str(self.meta),
            "reused": self.reused,
            "seconds": round(self.seconds, 1),
            "inputs_digest": self.inputs_digest,
            "compat_layer": spec.prefix if (spec := self.plan.compat_spec) is not None else None,
        }


def build_inputs(
    plan: BuildPlan,
    source_sums: Mapping[str, str],
    eb_version: str,
    cflags: str,
    compat_identity: str | None = None,
) -> dict[str, Any]:
    """What decides the build's result; its digest decides reuse (pure apart from reading the files).

    The toolchain/robot, runtime/image and compat_layer keys appear only where they differ from the
    defaults (SYSTEM with the project's easyconfigs; the namespace runtime; the host's loader and
    libc), so records written before those settings existed stay valid.  ``compat_identity`` is the
    inputs digest of the compatibility layer a ``compat_layer: true`` stack links to.
    """
    ecs = {ec.path.name: file_sha256(ec.path) for ec in plan.stack.easyconfigs}
    extra: dict[str, Any] = {}
    if not plan.stack.embedded:
        extra["toolchain"] = plan.stack.toolchain
        extra["robot"] = [str(p) for p in plan.stack.robot_paths]
    if plan.runtime.runtime is not Runtime.NAMESPACE:
        extra["runtime"] = plan.runtime.runtime.value
        extra["image"] = plan.runtime.image
    compat = plan.compat_spec
    if compat is not None:
        extra["compat_layer"] = {
            "prefix": compat.prefix,
            "layer": compat_identity or "",
            "link_code": compatlink.code_sha256(),
            # the layer's compiler and Python build the stack (another family's target)
            **({"layer_tools": layertools.code_sha256()} if plan.layer_tools else {}),
        }
    return {
        **extra,
        "format": RECORD_FORMAT,
        "target": plan.target.subdir,
        "version": plan.version,
        "repository": plan.repository,
        "easystack": file_sha256(plan.stack.easystack),
        "easyconfigs": ecs,
        "sources": dict(sorted(source_sums.items())),
        "easybuild": eb_version,
        "hooks": file_sha256(HOOKS),
        "cflags": cflags,
        "lmod_files": lmodfiles.files_digest(plan.prefix),
    }


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def gcc_version() -> str:
    return run(["gcc", "-dumpfullversion"], timeout=30).stdout.strip()


def _eb_log_tail(plan: BuildPlan, lines: int = 40) -> str:
    logs = sorted(
        (plan.target_dir / "eb").rglob("easybuild-*.log"),
        key=lambda p: p.stat().st_mtime if p.exists() else 0,
    )
    for tmp in sorted(Path("/tmp").glob("eb-*/**/easybuild-*.log"), key=lambda p: p.stat().st_mtime)[-1:]:
        logs.append(tmp)
    if not logs:
        return "(no EasyBuild log found)"
    text = logs[-1].read_text(encoding="utf-8", errors="replace").splitlines()
    return f"{logs[-1]}:\n" + "\n".join(text[-lines:])


def lmod_cache_argv(prefix: str) -> list[str]:
    """Lmod's spider cache for the target, as EESSI's ingestion updates it (pure)."""
    cache = f"{prefix}/.lmod/cache"
    return [UPDATE_CACHE, "-d", cache, "-t", f"{cache}/timestamp", f"{prefix}/modules/all"]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def eb_error_summary(output: str) -> str:
    """The line that says why EasyBuild failed: its last ``ERROR:`` line, colours removed (pure)."""
    lines = [_ANSI.sub("", line).strip() for line in output.splitlines()]
    errors = [line for line in lines if line.startswith("ERROR:") and line != "ERROR: Shell command failed!"]
    return errors[-1].removeprefix("ERROR:").strip() if errors else "see the output below"


def ensure_build(
    plan: BuildPlan, stacks: StackConfig, *, environ: Mapping[str, str] | None = None, dry_run: bool = False
) -> BuildResult:
    """Build (or reuse) the target's stack and its tarball."""
    env = dict(os.environ if environ is None else environ)
    start = time.monotonic()
    eb_version = installed_easybuild_version()
    overlay = plan.view()
    cfg = plan.eb_config(gcc_version(), as_root=overlay.eb_sees_root)
    record_path = plan.target_dir / "record.json"
    compat = plan.compat_spec
    with _locked(plan.target_dir / "record.lock"):
        wanted = plan_sources(plan.stack.easyconfigs, stacks)
        sums = Provisioner(plan.sourcepath, plan.state / "fetch", stacks.debian).provision(wanted)
        layer: compatlink.LayerLink | None = None
        identity: str | None = None
        if compat is not None:
            # built or reused before the reuse decision: a reused build's view shows it too
            layer = None if dry_run else compatlink.ensure_layer_link(compat)
            identity = layer.identity if layer is not None else compatlink.layer_identity(compat)
        inputs = build_inputs(plan, sums, eb_version, cfg.system_cflags, identity)
        digest = inputs_digest(inputs)
        record = _read_record(record_path)
        # the record names files by their names: a state dir that moved still finds its build
        kept = plan.target_dir / "tarballs" / Path(record["tarball"]).name if record else None
        if record and record.get("inputs_digest") == digest and kept is not None and kept.is_file():
            log.info(
                "reusing the build of %s from %s (inputs unchanged)", plan.target.name, record["built_at"]
            )
            return BuildResult(
                plan,
                kept,
                kept.with_name(Path(record["meta"]).name),
                True,
                time.monotonic() - start,
                digest,
                overlay,
            )
        if dry_run:
            raise BuildError(f"--dry-run: {plan.target.name} needs a build (inputs changed or never built)")
        record_path.unlink(missing_ok=True)
        for d in (overlay.upper, overlay.work, cfg.buildpath, plan.target_dir / "tarballs"):
            shutil.rmtree(d, ignore_errors=True)
        eb_env = eb_environment(cfg, env)
        install_env = eb_env
        if plan.layer_tools and layer is not None:
            tools = layertools.write_wrappers(plan.target_dir / "layer-tools", layer.prefix)
            install_env = layertools.layer_environment(eb_env, layer.prefix, tools)
            log.info("%s: the compatibility layer's gcc and python3 build it (%s)", plan.target.name, tools)
        try:
            overlay.run(eb_install_argv(cfg, plan.stack.easystack), timeout=EB_TIMEOUT, env=install_env)
        except CommandFailed as e:
            raise BuildError(
                f"EasyBuild failed for {plan.target.name} ({plan.stack.easystack.name}): "
                f"{eb_error_summary(e.output_tail)}\n{e.output_tail[-2000:]}\n"
                f"EasyBuild log tail: {_eb_log_tail(plan)}"
            ) from e
        linked = _link_to_compat(plan, overlay, layer) if layer is not None else None
        # Lmod's configuration for clients (LMOD_RC, LMOD_PACKAGE_PATH), beside the cache written next
        lmodfiles.write_lmod_files(overlay.upper / _below_mount(plan, overlay) / ".lmod", plan.prefix)
        overlay.run(lmod_cache_argv(plan.prefix), timeout=600, env=eb_env)
        missing = overlay.run(
            eb_missing_argv(cfg, plan.stack.easystack), timeout=600, env=eb_env, check=False
        )
        gone = missing_modules(missing.stdout + missing.stderr)
        if missing.returncode != 0 or gone:
            raise BuildError(
                f"installations missing for {plan.target.name} after the build: "
                f"{', '.join(gone) or missing.tail(10)}"
                f"; EasyBuild log tail: {_eb_log_tail(plan)}"
            )
        packed = pack(
            overlay.upper,
            plan.version,
            plan.target.subdir,
            plan.target_dir / "tarballs",
            int(time.time()),
            env,
        )
        from ..cvmfs.tarcheck import check_tarball

        check_tarball(packed.tarball, expected_version=plan.version, repository=plan.repository)
        new_record = {
            "format": RECORD_FORMAT,
            "inputs_digest": digest,
            "inputs": inputs,
            "tarball": str(packed.tarball),
            "meta": str(packed.meta),
            "members": packed.members,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.monotonic() - start, 1),
        }
        if layer is not None and linked is not None:
            new_record["compat_link"] = {"layer": layer.to_json(), **linked.summary()}
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(new_record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(record_path)
        log.info("built %s in %.0fs: %s", plan.target.name, time.monotonic() - start, packed.tarball)
        return BuildResult(
            plan, packed.tarball, packed.meta, False, time.monotonic() - start, digest, overlay
        )


def _below_mount(plan: BuildPlan, view: BuildView) -> str:
    """The target's prefix relative to the view's mount point (``/cvmfs/<repo>``), as in its upper dir."""
    return plan.prefix[len(view.mount) :].strip("/")


def _link_to_compat(plan: BuildPlan, view: BuildView, layer: compatlink.LayerLink) -> compatlink.LinkPlan:
    """The link step: plan the patchelf edits for what EasyBuild installed, refuse a file that would
    load a host library, apply the edits with the layer's patchelf in the namespace, then check with the
    layer's loader that every linked file loads only the layer's and the stack's own files."""
    if not isinstance(view, OverlayView):
        raise BuildError(f"stack {plan.stack.name} links to the compatibility layer: use --runtime namespace")
    below = plan.prefix[len(view.mount) :].strip("/") + "/software"
    link = compatlink.plan_for_upper(view, below, plan.target.family, layer)
    if link.problems:
        shown = "\n".join(link.problems[:10])
        raise BuildError(
            f"{len(link.problems)} library dependencies of {plan.target.name}'s new installations are not "
            f"in the compatibility layer:\n{shown}\nfix: add the Debian packages that ship them to "
            f"matrices/compat/{plan.target.family}.yaml, or install them in the stack"
        )
    compatlink.apply_links(view, link, layer)
    again = compatlink.plan_for_upper(view, below, plan.target.family, layer)
    problems = [f"{e.rel}: still not linked after patchelf" for e in again.edits]
    problems += compatlink.verify_links(view, link.files, layer, (layer.prefix, plan.prefix))
    if problems:
        shown = "\n".join(problems[:10])
        raise BuildError(
            f"linking {plan.target.name}'s installations to {layer.prefix} left {len(problems)} "
            f"problems:\n{shown}\ncheck the files with `{layer.loader} --list FILE` in the build's namespace"
        )
    log.info("linked %s to %s: %s", plan.target.name, layer.prefix, link.summary())
    return link


def resolve_stack(plan: BuildPlan, *, environ: Mapping[str, str] | None = None) -> tuple[Resolved, ...]:
    """EasyBuild's own dry run of the plan's easystack (``eb --robot --dry-run``) through the plan's
    runtime: the whole dependency graph in build order, nothing built or fetched.

    It runs in a scratch overlay (``<target dir>/resolve``, removed afterwards), because even a dry run
    creates ``<installpath>/modules/all``.
    """
    root = plan.target_dir / "resolve"
    view = plan.view(root, layer=False)
    cfg = plan.eb_config(gcc_version(), as_root=view.eb_sees_root)
    env = eb_environment(cfg, os.environ if environ is None else environ)
    argv = eb_resolve_argv(cfg, plan.stack.easystack)
    try:
        result = view.run(argv, timeout=RESOLVE_TIMEOUT, env=env)
    except CommandFailed as e:
        raise BuildError(
            f"EasyBuild could not resolve {plan.stack.easystack} for {plan.target.name}: "
            f"{e.output_tail[-2000:]}"
        ) from e
    finally:
        shutil.rmtree(root, ignore_errors=True)
    graph = parse_dry_run(result.stdout + "\n" + result.stderr)
    if not graph:
        raise BuildError(
            f"eb --dry-run printed no dependency graph for {plan.stack.easystack}: {result.tail(20)}"
        )
    return graph


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == RECORD_FORMAT else None


def module_check_argv(prefix: str, script: str) -> list[str]:
    """bash that initialises Lmod, points MODULEPATH at the target's modules and runs ``script`` (pure)."""
    return ["bash", "-c", f"source {LMOD_INIT} && export MODULEPATH={prefix}/modules/all && {script}"]
