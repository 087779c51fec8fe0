"""The ``apptainer``/``singularity`` build runtime: EESSI's build container shape, described and driven.

EESSI builds inside a container (``eessi_container.sh``, default image
``docker://ghcr.io/eessi/build-node:debian12``) that mounts the repository read-only under ``/cvmfs_ro``
and a writable ``fuse-overlayfs`` over it at ``/cvmfs/<repo>`` with ``--fusemount``, so that EasyBuild
installs into ``/cvmfs/<repo>/versions/...`` and the new files land in the overlay's upper dir
(EESSI's build container).  This module does the same:

* :func:`build_definition` writes the image's definition with spython's ``Recipe`` and
  ``SingularityWriter``: bootstrap from the configured base image (EESSI's build node by default) and
  add, from the Debian archive, what this pipeline's builds use on the host (compilers, Lmod,
  fuse-overlayfs).  EasyBuild itself is not put in the image: the host's pinned EasyBuild runs inside
  the container from the bound virtual environment, so the build's inputs digest stays true.
* :func:`container_exec_argv` is the pure ``<runtime> exec --fusemount ... --bind ... IMAGE ARGV``.
* :func:`build_image` builds the SIF from the definition with spython's ``Client`` — only where the
  program exists; commands themselves run through :func:`eessi_pipeline.proc.run` (time-out, process
  group killed), which spython's client does not offer.

spython drives the ``singularity`` program by that name; Apptainer installs a ``singularity`` link
to itself, which is what :func:`build_image` needs on PATH.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..matrix import PROJECT_ROOT
from ..proc import CommandResult, run
from .easybuild import LMOD_CMD
from .overlay import OverlayDirs, repository_mount
from .runtime import Runtime, RuntimeChoice

log = logging.getLogger(__name__)

SPYTHON_PIN = "spython==0.3.14"
LOWER_MOUNT = "/cvmfs_ro"  # where the repository's current content appears inside the container
DEBIAN_PACKAGES = (
    "build-essential", "bzip2", "ca-certificates", "file", "fuse-overlayfs", "gzip", "lmod", "patch",
    "patchelf", "python3", "tar", "unzip", "xz-utils", "zstd",
)  # fmt: skip
PASSED_ENV = ("PATH", "LMOD_CMD", "MODULEPATH", "EESSI_PIPELINE_SYSTEM_CFLAGS", "LC_ALL")
IMAGE_BUILD_TIMEOUT_NOTE = "spython's client has no time-out: an image build runs until it ends"


def _spython(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BuildError(
            f"the container runtimes need spython; run `.venv/bin/pip install '{SPYTHON_PIN}'` "
            "or build with `--runtime namespace`"
        ) from e


def docker_reference(image: str) -> str:
    """``docker://ghcr.io/x:y`` → ``ghcr.io/x:y``; a definition bootstraps from docker images only (pure)."""
    if "://" in image and not image.startswith("docker://"):
        raise BuildError(
            f"cannot bootstrap the build container from {image!r}: the generated definition uses "
            "`Bootstrap: docker`; give a docker://… base image, or a ready .sif with --image"
        )
    return image.removeprefix("docker://")


def build_definition(base_image: str, packages: Iterable[str] = DEBIAN_PACKAGES) -> str:
    """The Apptainer/Singularity definition of the build container, written by spython (pure)."""
    recipe_mod = _spython("spython.main.parse.recipe")
    writer_mod = _spython("spython.main.parse.writers.singularity")
    recipe = recipe_mod.Recipe()
    recipe.fromHeader = docker_reference(base_image)
    recipe.labels = [
        ["org.eessi-pipeline.purpose", "software-layer build container (eessi-pipeline build --runtime)"],
        ["org.eessi-pipeline.base", base_image],
    ]
    recipe.install = [
        "export DEBIAN_FRONTEND=noninteractive",
        "apt-get update",
        f"apt-get install -y --no-install-recommends {' '.join(sorted(packages))}",
        "rm -rf /var/lib/apt/lists/*",
        f"mkdir -p /cvmfs {LOWER_MOUNT}",
    ]
    recipe.environ = ["LC_ALL=C.UTF-8", f"LMOD_CMD={LMOD_CMD}"]
    recipe.test = "command -v fuse-overlayfs && test -x " + LMOD_CMD
    text: str = writer_mod.SingularityWriter({"build": recipe}).convert(runscript="/bin/bash", force=True)
    return text + "\n"


def image_plan(image: str, container_dir: Path) -> tuple[Path | str, str | None]:
    """Which image the container runs and, where it is built here, from which base (pure).

    A ``.sif`` path (or any existing file) is used as it is.  Anything else is the base image of the
    generated definition: the SIF is ``<container_dir>/<base slug>-<definition digest>.sif``.
    """
    if image.endswith(".sif") or ("://" not in image and Path(image).is_file()):
        return Path(image), None
    digest = hashlib.sha256(build_definition(image).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", docker_reference(image)).strip("_")
    return container_dir / f"{slug}-{digest}.sif", image


def collapse_binds(paths: Iterable[Path | str]) -> tuple[str, ...]:
    """Absolute, de-duplicated bind paths with those inside another dropped (pure)."""
    chosen: list[str] = []
    for p in sorted({os.path.normpath(str(p)) for p in paths}):
        if not any(p == c or p.startswith(c.rstrip("/") + "/") for c in chosen):
            chosen.append(p)
    return tuple(chosen)


def fusemount_spec(repository_mount: str, upper: Path, work: Path) -> str:
    """``--fusemount`` value: fuse-overlayfs in the container over the read-only copy (pure)."""
    lower = LOWER_MOUNT + repository_mount.removeprefix("/cvmfs")
    return f"container:fuse-overlayfs -o lowerdir={lower},upperdir={upper},workdir={work} {repository_mount}"


def container_exec_argv(
    binary: str,
    image: str,
    repository_mount: str,
    lower: Path,
    upper: Path,
    work: Path,
    binds: Sequence[str],
    argv: Sequence[str],
) -> list[str]:
    """``apptainer exec`` (or ``singularity exec``) of ``argv`` with the overlay at ``/cvmfs/<repo>`` (pure).

    ``--contain`` keeps the host's home and /tmp out; what the build needs is bound at the same path.
    """
    lower_in = LOWER_MOUNT + repository_mount.removeprefix("/cvmfs")
    out = [
        binary, "exec", "--contain",
        "--bind", f"{lower}:{lower_in}:ro",
        "--fusemount", fusemount_spec(repository_mount, upper, work),
    ]  # fmt: skip
    for b in binds:
        out += ["--bind", b]
    return [*out, image, *argv]


def container_environment(runtime: Runtime, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus ``APPTAINERENV_X`` (``SINGULARITYENV_X``) for what EasyBuild needs inside (pure)."""
    prefix = "SINGULARITYENV_" if runtime is Runtime.SINGULARITY else "APPTAINERENV_"
    out = dict(env)
    for key in PASSED_ENV:
        if key in env:
            out[prefix + key] = env[key]
    return out


def build_image(
    definition: str, sif: Path, as_root: bool, which: Callable[[str], str | None] = shutil.which
) -> Path:
    """Build ``sif`` from ``definition`` with spython's client; only where ``singularity`` is on PATH."""
    if which("singularity") is None:
        raise BuildError(
            f"cannot build the build container {sif}: spython runs the `singularity` program (Apptainer "
            "installs it as a link to apptainer), which is not on PATH; build it yourself with "
            f"`apptainer build {sif} {sif.with_suffix('.def')}` or pass a ready image with --image FILE.sif"
        )
    sif.parent.mkdir(parents=True, exist_ok=True)
    recipe_file = sif.with_suffix(".def")
    recipe_file.write_text(definition, encoding="utf-8")
    client = _spython("spython.main").Client
    log.info("building %s from %s (%s)", sif, recipe_file, IMAGE_BUILD_TIMEOUT_NOTE)
    try:
        built = client.build(
            recipe=str(recipe_file),
            image=str(sif),
            sudo=False,
            options=[] if as_root else ["--fakeroot"],
            quiet=True,
        )
    except SystemExit as e:  # spython reports failures by exiting
        raise BuildError(f"building {sif} from {recipe_file} failed (spython exited with {e.code})") from e
    if not built or not sif.is_file():
        raise BuildError(
            f"building {sif} from {recipe_file} produced no image; run the build by hand to see why"
        )
    return sif


@dataclass(frozen=True, slots=True)
class ContainerView(OverlayDirs):
    """``/cvmfs/<repo>`` writable inside the build container; new files land in ``root/upper``."""

    runtime: Runtime
    binary: str
    image: str  # the --image setting: a .sif, or the base image of the generated definition
    mount: str
    root: Path
    lower: Path
    binds: tuple[str, ...]
    eb_sees_root: bool
    container_dir: Path

    @classmethod
    def create(
        cls, choice: RuntimeChoice, binary: str, repository: str, root: Path, state: Path
    ) -> ContainerView:
        mount, lower = repository_mount(repository, root)
        binds = collapse_binds([PROJECT_ROOT, sys.prefix, sys.base_prefix, state])
        return cls(
            choice.runtime,
            binary,
            choice.image,
            mount,
            root,
            lower,
            binds,
            os.geteuid() == 0,
            state / "container",
        )

    @property
    def sif(self) -> Path | str:
        return image_plan(self.image, self.container_dir)[0]

    def definition(self) -> str | None:
        base = image_plan(self.image, self.container_dir)[1]
        return build_definition(base) if base else None

    def describe(self) -> str:
        return f"{self.runtime.value} runtime, image {self.sif}"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return container_exec_argv(
            self.binary, str(self.sif), self.mount, self.lower, self.upper, self.work, self.binds, argv
        )

    def prepare(self) -> None:
        for d in (self.upper, self.work):
            d.mkdir(parents=True, exist_ok=True)
        if self.lower == self.root / "lower":
            self.lower.mkdir(parents=True, exist_ok=True)
        sif, base = image_plan(self.image, self.container_dir)
        if Path(sif).is_file():
            return
        if base is None:
            raise BuildError(f"build container image {sif} does not exist; fix --image or build it first")
        build_image(build_definition(base), Path(sif), self.eb_sees_root)

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, check: bool = True
    ) -> CommandResult:
        self.prepare()
        full_env = container_environment(self.runtime, os.environ if env is None else env)
        return run(self.wrap(argv), timeout=timeout, env=full_env, check=check)
