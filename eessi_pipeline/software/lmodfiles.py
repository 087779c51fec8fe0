"""Lmod's configuration published with a target's software: ``<prefix>/.lmod/{lmodrc.lua,SitePackage.lua}``.

EESSI's init (``init/bash`` and the ``EESSI/<version>`` module) points ``LMOD_RC`` at
``<software subdir>/.lmod/lmodrc.lua`` and ``LMOD_PACKAGE_PATH`` at ``<software subdir>/.lmod``, and
complains when either file is missing.  Both are part of the software tarball here:

* ``lmodrc.lua`` names the spider cache the build writes (``<prefix>/.lmod/cache``, see
  :func:`eessi_pipeline.software.driver.lmod_cache_argv`), so ``module avail`` reads the cache instead of
  walking ``modules/all`` on every call;
* ``SitePackage.lua`` registers a ``load`` hook for what sites put under ``host_injections``: when the
  site has ``<host_injections>/<version>/software/linux/<subdir>/rpath_overrides/<Name>/system/lib``
  (EESSI's place for a site's own MPI or driver libraries), loading module ``<Name>`` puts that
  directory in front of ``LD_LIBRARY_PATH``.  Without such a directory the hook changes nothing.

Everything here is pure apart from :func:`write_lmod_files`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

LMODRC = "lmodrc.lua"
SITE_PACKAGE = "SitePackage.lua"

_LMODRC = """-- Lmod configuration of {prefix}, written by eessi-pipeline.
-- The spider cache is rebuilt by every build (update_lmod_system_cache_files).
propT = {{}}
scDescriptT = {{
  {{
    ["dir"] = "{prefix}/.lmod/cache",
    ["timestamp"] = "{prefix}/.lmod/cache/timestamp",
  }},
}}
"""

_SITE_PACKAGE = """-- Lmod hooks of the software layer, by eessi-pipeline (LMOD_PACKAGE_PATH finds it).
-- A site may place libraries that must replace the stack's own (its MPI, its drivers) in
--   $EESSI_CVMFS_REPO/host_injections/$EESSI_VERSION/software/linux/$EESSI_SOFTWARE_SUBDIR
--     /rpath_overrides/<Name>/system/lib
-- (host_injections is a variant symlink to a directory of the client, /opt/eessi by default); loading
-- module <Name> then puts that directory first in LD_LIBRARY_PATH.
require("strict")
local hook = require("Hook")

local function site_override_dir(name)
  local repo = os.getenv("EESSI_CVMFS_REPO")
  local version = os.getenv("EESSI_VERSION")
  local subdir = os.getenv("EESSI_SOFTWARE_SUBDIR")
  if repo == nil or version == nil or subdir == nil then
    return nil
  end
  return pathJoin(repo, "host_injections", version, "software", "linux", subdir,
                  "rpath_overrides", name, "system", "lib")
end

local function override_of(t)
  local name = t.modFullName:match("^([^/]+)")
  local dir = name and site_override_dir(name)
  if dir ~= nil and isDir(dir) then
    return dir
  end
  return nil
end

local function eessi_pipeline_load_hook(t)
  local dir = override_of(t)
  if dir ~= nil then
    prepend_path("LD_LIBRARY_PATH", dir)
  end
end

local function eessi_pipeline_unload_hook(t)
  local dir = override_of(t)
  if dir ~= nil then
    remove_path("LD_LIBRARY_PATH", dir)
  end
end

hook.register("load", eessi_pipeline_load_hook)
hook.register("unload", eessi_pipeline_unload_hook)
"""


def lmodrc(prefix: str) -> str:
    """``lmodrc.lua`` of the software installed at ``prefix`` (pure)."""
    return _LMODRC.format(prefix=prefix.rstrip("/"))


def site_package() -> str:
    """``SitePackage.lua`` of every software subdir (pure)."""
    return _SITE_PACKAGE


def lmod_files(prefix: str) -> dict[str, str]:
    """The files of ``<prefix>/.lmod`` this module writes, by name (pure)."""
    return {LMODRC: lmodrc(prefix), SITE_PACKAGE: site_package()}


def files_digest(prefix: str) -> str:
    """What a build's inputs record of these files (pure)."""
    h = hashlib.sha256()
    for name, text in sorted(lmod_files(prefix).items()):
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def write_lmod_files(dot_lmod: Path, prefix: str) -> list[Path]:
    """Write the files into ``dot_lmod`` (the ``.lmod`` directory of ``prefix``, wherever it is staged)."""
    dot_lmod.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in lmod_files(prefix).items():
        path = dot_lmod / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
        written.append(path)
    return written
