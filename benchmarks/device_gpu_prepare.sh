#!/bin/bash
# Prepare what benchmarks/device_gpu.sh needs on a GPU machine without internet (issue 19), here on a
# build host without a GPU:
#   .device/bin/gpu_bandwidth   the program of the GPU stack, built by `eessi-pipeline gpu build`
#                               (EasyBuild, CUDA from PyPI wheels, sm_90 for zen4_cc90); its CUDA runtime
#                               is static, so it needs only the GPU machine's driver
#   .device/pylib/archspec      archspec, for `eessi-pipeline detect --accel` with the machine's python3
# About 1.6 MB in all.  .device/ is ignored through .git/info/exclude (a local choice, not .gitignore):
# the device tool carries it with carry: [".device/bin", ".device/pylib"].
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

"$ROOT/.device/bin/gpu_bandwidth" --query || true   # here: {"ok": false, "no_gpu": true, ...}
du -sh "$ROOT/.device/bin" "$ROOT/.device/pylib"
