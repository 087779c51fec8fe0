#!/usr/bin/env bash
# Set up eessi-pipeline on a fresh Debian/Ubuntu machine, then run the main job.
#
#   bash setup.sh            install, then run the main job on the embedded default
#   bash setup.sh --no-run   install only (CI jobs that run their own commands)
#
# As root it installs the missing Debian packages with apt-get; otherwise it lists
# them and stops.  It then creates .venv and installs the project with its test and
# lint tools.  Safe to run again: nothing is reinstalled that is already there.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'EOT'
usage: bash setup.sh [--no-run]

  (no option)  install what is missing, then run the main job for this host's target:
               compatibility layer, init scripts and software built, tested, gated,
               published, and used from a client mount (about 10 minutes the first time)
  --no-run     install only: Debian packages (as root), .venv with the project and its tools
  -h, --help   show this help and exit
EOT
}

RUN_MAIN=1
for arg in "$@"; do
  case "$arg" in
    --no-run) RUN_MAIN=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --no-run or --help)" >&2; exit 2 ;;
  esac
done

# Debian packages the pipeline needs.  Later parts of the pipeline add theirs here.
PACKAGES=(python3 python3-venv python3-pip git ca-certificates openssh-client
          fuse3 fuse-overlayfs lmod patchelf nginx squid build-essential bzip2
          slurmctld slurmd slurm-client iproute2 qemu-user-static)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "[setup] installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # nginx, squid and Slurm would start system-wide instances on all interfaces when installed;
    # the pipeline runs its own on loopback, so keep the packages' services from starting.
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if ((added_policy)); then rm -f /usr/sbin/policy-rc.d; fi
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
      systemctl disable --now nginx squid slurmctld slurmd >/dev/null 2>&1 || true
    fi
  else
    echo "[setup] missing Debian packages: ${missing[*]}" >&2
    echo "[setup] install them with: sudo apt-get install ${missing[*]}  (then run this script again)" >&2
    exit 1
  fi
fi

# aarch64 through emulation (README, "aarch64 on an x86_64 machine"): the kernel hands every Arm
# executable to qemu-aarch64-static.  Fix-binary mode (flag F) opens the interpreter now, so it also
# works inside the mount namespaces and chroots where builds and client mounts run.
register_emulator() {
  local family=$1 binfmt=/proc/sys/fs/binfmt_misc conf line flags
  conf=/usr/lib/binfmt.d/qemu-$family.conf
  [[ $(uname -m) != "$family" && -r $conf ]] || return 0
  if [[ ! -e $binfmt/register ]]; then
    mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || {
      echo "[setup] cannot mount binfmt_misc at $binfmt: $family targets will not build here" >&2; return 0; }
  fi
  if [[ -e $binfmt/qemu-$family ]]; then
    flags=$(sed -n 's/^flags: //p' "$binfmt/qemu-$family")
    [[ $flags == *F* ]] && return 0
    echo "[setup] re-registering qemu-$family in fix-binary mode (it had flags '$flags')"
    echo -1 > "$binfmt/qemu-$family"
  fi
  line=$(grep -v '^#' "$conf" | head -n1)
  [[ ${line##*:} == *F* ]] || line="${line}F"
  echo "$line" > "$binfmt/register"
  echo "[setup] registered $(qemu-$family-static --version | head -n1) for $family programs (binfmt_misc, fix-binary)"
}
if [[ $(id -u) -eq 0 ]]; then
  register_emulator aarch64
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "[setup] $PYTHON is $("$PYTHON" -V 2>&1); eessi-pipeline needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv .venv
fi
echo "[setup] installing eessi-pipeline and its test tools into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

if ((RUN_MAIN)); then
  echo "[setup] main job: validate the matrix, detect this host, then build, test, gate, publish and use its target"
  .venv/bin/eessi-pipeline validate
  .venv/bin/eessi-pipeline detect --all
  target=$(.venv/bin/eessi-pipeline detect --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["target"] or "")')
  if [[ -z $target ]]; then
    echo "[setup] the matrix builds no target for this host's CPU family; nothing to run"
    exit 0
  fi
  .venv/bin/eessi-pipeline plan --target "$target"
  # init scripts + the target's software: build -> pytest + ReFrame -> signed gate record -> publish
  # -> Stratum 1 -> post-publish checks -> a client mount runs the software (see README, "The whole flow")
  .venv/bin/eessi-pipeline run --target "$target"
  repo=${EESSI_PIPELINE_REPOSITORY:-software.eessi.local}
  .venv/bin/eessi-pipeline repo verify "$repo"
fi
