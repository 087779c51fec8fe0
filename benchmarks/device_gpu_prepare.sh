#!/bin/bash
# Prepare what benchmarks/device_gpu.sh needs on a GPU machine without internet (issue 19), here on a
# build host without a GPU:
#   .device/bin/gpu_bandwidth   the program of the GPU stack, built by `eessi-pipeline gpu build`
#                               (EasyBuild, CUDA from PyPI wheels, sm_90 for zen4_cc90); its CUDA runtime
#                               is static, so it needs only the GPU machine's driver
#   .device/pylib/archspec      archspec, for `eessi-pipeline detect --accel` with the machine's python3
#   .device/rfmwheels/          ReFrame and its dependencies as wheels for the GPU machine's python
# About 59 MB in all (1.6 MB without ReFrame).  .device/ is ignored through .git/info/exclude (a local
# choice, not .gitignore): carry: [".device/bin", ".device/pylib", ".device/rfmwheels"].
#
#   bash benchmarks/device_gpu_prepare.sh [TARGET]       (default zen4_cc90; state in .device/state)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${1:-zen4_cc90}
STATE=${DEVICE_STATE:-$ROOT/.device/state}
PY=$ROOT/.venv/bin/python
mkdir -p "$ROOT/.device/bin" "$ROOT/.device/pylib"
grep -qx '/.device/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.device/' >>"$ROOT/.git/info/exclude"

"$ROOT/.venv/bin/eessi-pipeline" --state-dir "$STATE" gpu build --target "$TARGET" --json >"$ROOT/.device/gpu-build.json"
prefix=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["prefix"])' "$ROOT/.device/gpu-build.json")
install -m 0755 "$prefix"/software/GPUBandwidth/*/bin/gpu_bandwidth "$ROOT/.device/bin/gpu_bandwidth"

archspec=$("$PY" -c 'import archspec, os; print(os.path.dirname(archspec.__file__))')
rm -rf "$ROOT/.device/pylib/archspec"
cp -r "$archspec" "$ROOT/.device/pylib/archspec"
find "$ROOT/.device/pylib" -name __pycache__ -prune -exec rm -rf {} +

# ReFrame for the GPU machine's python (3.12 on the H200 machine; RFM_PYTHON_VERSION=none to skip):
# wheels of reframe-hpc and its dependencies, ~57 MB, unpacked there by device_gpu.sh
RFM_PYTHON_VERSION=${RFM_PYTHON_VERSION:-3.12}
if [ "$RFM_PYTHON_VERSION" != none ]; then
  abi="cp${RFM_PYTHON_VERSION/./}"
  rm -rf "$ROOT/.device/rfmwheels"
  "$PY" -m pip download --disable-pip-version-check --only-binary=:all: --python-version "$RFM_PYTHON_VERSION" \
    --implementation cp --abi "$abi" --abi abi3 --abi none --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any -d "$ROOT/.device/rfmwheels" "reframe-hpc==$("$PY" -c 'import reframe; print(reframe.VERSION)')" >/dev/null
fi

"$ROOT/.device/bin/gpu_bandwidth" --query || true   # here: {"ok": false, "no_gpu": true, ...}
du -sh "$ROOT"/.device/{bin,pylib,rfmwheels} 2>/dev/null
