"""Where a build runs: the build runtime setting and the protocol every runtime's view implements.

``namespace`` (the default) runs EasyBuild on this host in a private mount namespace with
``/cvmfs/<repo>`` as a writable overlay (:mod:`eessi_pipeline.software.overlay`).  ``apptainer`` and
``singularity`` run it inside EESSI's build container shape instead: the image has fuse-overlayfs, and
the container mounts the same overlay at ``/cvmfs/<repo>`` with ``--fusemount``
(:mod:`eessi_pipeline.software.container`).

The setting follows the project's order: ``--runtime`` > ``$EESSI_PIPELINE_BUILD_RUNTIME`` > ``namespace``;
the container image: ``--image`` > ``$EESSI_PIPELINE_BUILD_IMAGE`` > EESSI's build node image.
"""

from __future__ import annotations

import enum
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import BuildError, UsageError
from ..proc import CommandResult

RUNTIME_ENV = "EESSI_PIPELINE_BUILD_RUNTIME"
IMAGE_ENV = "EESSI_PIPELINE_BUILD_IMAGE"
DEFAULT_IMAGE = "docker://ghcr.io/eessi/build-node:debian12"  # eessi_container.sh's default image


class Runtime(enum.Enum):
    NAMESPACE = "namespace"
    APPTAINER = "apptainer"
    SINGULARITY = "singularity"

    @property
    def binary(self) -> str | None:
        """The program this runtime needs (None: only util-linux's ``unshare``)."""
        return None if self is Runtime.NAMESPACE else self.value


@dataclass(frozen=True, slots=True)
class RuntimeChoice:
    """The runtime and image a build uses, with where each came from (for messages and ``--dry-run``)."""

    runtime: Runtime
    image: str
    source: str  # "--runtime", "$EESSI_PIPELINE_BUILD_RUNTIME" or "default"


INSTALL_HINTS: Mapping[Runtime, str] = {
    Runtime.APPTAINER: "install Apptainer (https://apptainer.org/docs/admin/main/installation.html; "
    "e.g. `dnf install apptainer` from EPEL, or the .deb from its GitHub releases)",
    Runtime.SINGULARITY: "install SingularityCE (https://docs.sylabs.io/guides/latest/admin-guide/installation.html)",
}


def resolve_runtime(
    cli_runtime: str | None,
    cli_image: str | None,
    environ: Mapping[str, str],
) -> RuntimeChoice:
    """``--runtime``/``--image`` > environment > default (pure); an unknown runtime names the valid ones."""
    if cli_runtime:
        raw, source = cli_runtime, "--runtime"
    elif environ.get(RUNTIME_ENV):
        raw, source = environ[RUNTIME_ENV], f"${RUNTIME_ENV}"
    else:
        raw, source = Runtime.NAMESPACE.value, "default"
    try:
        runtime = Runtime(raw.strip().lower())
    except ValueError:
        valid = ", ".join(r.value for r in Runtime)
        raise UsageError(f"unknown build runtime {raw!r} (from {source}); use one of: {valid}") from None
    image = cli_image or environ.get(IMAGE_ENV) or DEFAULT_IMAGE
    return RuntimeChoice(runtime, image, source)


def require_binary(choice: RuntimeChoice, which: Callable[[str], str | None] = shutil.which) -> str | None:
    """The path of the runtime's program, or a :class:`BuildError` naming it and the way out."""
    name = choice.runtime.binary
    if name is None:
        return None
    found = which(name)
    if found is None:
        raise BuildError(
            f"build runtime {choice.runtime.value} (from {choice.source}) needs the `{name}` program, which "
            f"is not on PATH; {INSTALL_HINTS[choice.runtime]}, or build with `--runtime namespace` "
            f"(unset ${RUNTIME_ENV})"
        )
    return found


class BuildView(Protocol):
    """``/cvmfs/<repo>`` as a build sees it: writable, with the new files landing in ``upper``."""

    @property
    def mount(self) -> str: ...

    @property
    def upper(self) -> Path: ...

    @property
    def work(self) -> Path: ...

    @property
    def eb_sees_root(self) -> bool:
        """Whether EasyBuild runs as uid 0 there (then it needs ``--allow-use-as-root-…``)."""
        ...

    def wrap(self, argv: Sequence[str]) -> list[str]: ...

    def describe(self) -> str: ...

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, check: bool = True
    ) -> CommandResult: ...
