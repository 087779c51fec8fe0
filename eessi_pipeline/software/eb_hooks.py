"""EasyBuild hooks of eessi-pipeline (passed with ``--hooks``); EasyBuild imports this file by path.

With the SYSTEM toolchain EasyBuild sets no compiler flags, so ``--optarch`` has no effect on it.
These hooks give SYSTEM-toolchain builds the target's flags instead: ``$EESSI_PIPELINE_SYSTEM_CFLAGS``
(set by the pipeline from archspec, e.g. ``-O2 -march=znver4 -mtune=znver4``, or
``-O2 -march=x86-64 -mtune=generic`` for a generic target) becomes CFLAGS/CXXFLAGS/FFLAGS before the
configure and build steps, unless the easyconfig's environment already set them.
"""

from __future__ import annotations

import os
from typing import Any

FLAGS_ENV = "EESSI_PIPELINE_SYSTEM_CFLAGS"


def _system_flags(self: Any) -> None:
    flags = os.environ.get(FLAGS_ENV)
    if not flags or not self.toolchain.is_system_toolchain():
        return
    for var in ("CFLAGS", "CXXFLAGS", "FFLAGS"):
        os.environ.setdefault(var, flags)


def pre_configure_hook(self: Any, *args: Any, **kwargs: Any) -> None:
    _system_flags(self)


def pre_build_hook(self: Any, *args: Any, **kwargs: Any) -> None:
    _system_flags(self)
