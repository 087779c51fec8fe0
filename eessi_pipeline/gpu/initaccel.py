# The bash and Lua it publishes follow their own layout, not Python's line length (as initscript.py).
# ruff: noqa: E501
"""The accelerator part of the published init scripts (``init/bash`` and ``modules/EESSI/<v>.lua``).

After the CPU subdirectory is chosen, the GPU decides an accelerator subdirectory as EESSI's init
does: ``$EESSI_ACCELERATOR_TARGET_OVERRIDE`` (``accel/nvidia/ccXY``; anything else stops the init with
the fix), else the first GPU's compute capability from ``nvidia-smi`` (none: no accelerator, no
message).  When ``<software path>/<accel>/modules/all`` is missing, the builds for the same major
version's ``.0`` are used (``cc86`` takes ``cc80``, as EESSI does); when that is missing too, the
CPU modules stay alone (with a note unless ``EESSI_SILENT``).  Otherwise::

    EESSI_ACCELERATOR_TARGET=accel/nvidia/cc90
    EESSI_ACCEL_SOFTWARE_PATH=<software path>/accel/nvidia/cc90
    EESSI_MODULEPATH_ACCEL=<software path>/accel/nvidia/cc90/modules/all     (first on MODULEPATH)

:func:`with_accel_bash` and :func:`with_accel_lua` insert these parts into the rendered CPU scripts
just before their closing message; they refuse a script that lost that place (the init script
module changed) rather than publish an init without GPU support.
"""

from __future__ import annotations

BASH_ANCHOR = '[[ -z "$EESSI_SILENT" ]] && echo "Environment set up to use'
LUA_ANCHOR = 'if mode() == "load" and not os.getenv("EESSI_MODULE_QUIET_LOAD") then'
NVIDIA_SMI_TIMEOUT_S = 30

ACCEL_BASH = r"""# the accelerator (eessi-pipeline gpu): EESSI_ACCELERATOR_TARGET, its modules before the CPU ones
unset EESSI_ACCELERATOR_TARGET EESSI_ACCEL_SOFTWARE_PATH EESSI_MODULEPATH_ACCEL
_eessi_a=""
if [[ -n "$EESSI_ACCELERATOR_TARGET_OVERRIDE" ]]; then
  if [[ ! "$EESSI_ACCELERATOR_TARGET_OVERRIDE" =~ ^accel/nvidia/cc[0-9]+$ ]]; then
    echo "EESSI: EESSI_ACCELERATOR_TARGET_OVERRIDE='$EESSI_ACCELERATOR_TARGET_OVERRIDE' is not like accel/nvidia/cc90; fix or unset it" >&2
    unset _eessi_a
    return 1
  fi
  _eessi_a="$EESSI_ACCELERATOR_TARGET_OVERRIDE"
elif command -v nvidia-smi >/dev/null 2>&1; then
  _eessi_t=""; command -v timeout >/dev/null 2>&1 && _eessi_t="timeout @TIMEOUT@"
  _eessi_cc=$($_eessi_t nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1)
  if [[ "$_eessi_cc" =~ ^[0-9]+\.[0-9]$ ]]; then _eessi_a="accel/nvidia/cc${_eessi_cc/./}"; fi
fi
if [[ -n "$_eessi_a" ]]; then
  if [[ ! -d "$EESSI_SOFTWARE_PATH/$_eessi_a/modules/all" && -d "$EESSI_SOFTWARE_PATH/${_eessi_a%?}0/modules/all" ]]; then
    _eessi_a="${_eessi_a%?}0"  # no build for this minor version: the major version's .0 (cc86 -> cc80)
  fi
  if [[ -d "$EESSI_SOFTWARE_PATH/$_eessi_a/modules/all" ]]; then
    export EESSI_ACCELERATOR_TARGET="$_eessi_a"
    export EESSI_ACCEL_SOFTWARE_PATH="$EESSI_SOFTWARE_PATH/$_eessi_a"
    export EESSI_MODULEPATH_ACCEL="$EESSI_ACCEL_SOFTWARE_PATH/modules/all"
    export MODULEPATH="$EESSI_MODULEPATH_ACCEL:$MODULEPATH"
  elif [[ -z "$EESSI_SILENT" ]]; then
    echo "EESSI: no software for $_eessi_a under $EESSI_SOFTWARE_PATH; CPU modules only" >&2
  fi
fi
unset _eessi_a _eessi_cc _eessi_t
""".replace("@TIMEOUT@", str(NVIDIA_SMI_TIMEOUT_S))

ACCEL_LUA = r"""-- the accelerator (eessi-pipeline gpu): EESSI_ACCELERATOR_TARGET, its modules before the CPU ones
local accel = os.getenv("EESSI_ACCELERATOR_TARGET_OVERRIDE") or ""
if accel ~= "" then
  if not accel:match("^accel/nvidia/cc%d+$") then
    LmodError("EESSI: EESSI_ACCELERATOR_TARGET_OVERRIDE='" .. accel .. "' is not like accel/nvidia/cc90; fix or unset it")
  end
elseif mode() == "load" then
  local cc = capture("command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=compute_cap "
    .. "--format=csv,noheader 2>/dev/null | head -n 1"):gsub("%s+$", "")
  if cc:match("^%d+%.%d$") then
    accel = "accel/nvidia/cc" .. cc:gsub("%.", "")
  end
else  -- unloading: undo what the load did
  accel = os.getenv("EESSI_ACCELERATOR_TARGET") or ""
end
if accel ~= "" then
  if not isDir(pathJoin(software, accel, "modules", "all")) then
    local major = accel:gsub("%d$", "0")  -- no build for this minor version: the major version's .0
    if isDir(pathJoin(software, major, "modules", "all")) then
      accel = major
    end
  end
  if isDir(pathJoin(software, accel, "modules", "all")) then
    setenv("EESSI_ACCELERATOR_TARGET", accel)
    setenv("EESSI_ACCEL_SOFTWARE_PATH", pathJoin(software, accel))
    setenv("EESSI_MODULEPATH_ACCEL", pathJoin(software, accel, "modules", "all"))
    prepend_path("MODULEPATH", pathJoin(software, accel, "modules", "all"))
  end
end
"""


class InitTemplateChanged(RuntimeError):
    """The CPU init script no longer has the place where the accelerator part goes."""


def _insert(text: str, anchor: str, part: str, what: str) -> str:
    at = text.find(anchor)
    if at < 0 or text.find(anchor, at + 1) >= 0:
        raise InitTemplateChanged(
            f"{what}: the line starting {anchor[:40]!r} must occur exactly once (the accelerator part goes "
            "before it); update eessi_pipeline/gpu/initaccel.py together with eessi_pipeline/initscript.py"
        )
    return text[:at] + part + text[at:]


def with_accel_bash(script: str) -> str:
    """``init/bash`` with the accelerator part before its closing message (pure)."""
    return _insert(script, BASH_ANCHOR, ACCEL_BASH, "init/bash")


def with_accel_lua(module: str) -> str:
    """The ``EESSI/<version>`` module with the accelerator part before its closing message (pure)."""
    return _insert(module, LUA_ANCHOR, ACCEL_LUA, "modules/EESSI/<version>.lua")
