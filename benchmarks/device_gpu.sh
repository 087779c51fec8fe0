#!/bin/bash
# One run on a machine with an NVIDIA GPU (issue 19): what the GPU target's checks need to see there.
#
#   bash benchmarks/device_gpu.sh [OUT_DIR]        (default: $OUT, else ./device-gpu-out)
#
# Needs, under the repository root (carried there by the caller, see docs/gpu.md "Device run"):
#   .device/bin/gpu_bandwidth   our STREAM-like CUDA program (matrices/sources/g/GPUBandwidth), built here
#                               with nvcc from NVIDIA's PyPI wheels for sm_90, CUDA runtime linked statically
#   .device/pylib/archspec      archspec (pure Python), so `eessi-pipeline detect --accel` runs from the
#                               checkout with whatever python3 >= 3.11 the machine has (no venv is carried:
#                               a venv made elsewhere points at that machine's interpreter)
#   .device/rfmwheels/          (optional) ReFrame 4.10 and its dependencies as wheels for that python
#                               (cp312 for the H200 machine, ~57 MB), unpacked there to run checks/gpu
#
# Writes into OUT_DIR, one JSON file per step and summary.json listing every step's status:
#   nvidia-smi.txt (with the inventory query), detect-accel.json, device-query.json,
#   bandwidth-<elements>.json, link-drivers.json, reframe-report.json (+ reframe.txt when it did not pass)
# DEVICE_PYTHON names the python3 to try first; GPU_BANDWIDTH another gpu_bandwidth; EXPECTED_CC the
# compute capability the device must have (default cc90).
# Exit status: 0 every step passed; 2 no usable GPU (the steps say why; nothing is an error then);
# 1 a step failed.  Never needs the network.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${1:-${OUT:-$PWD/device-gpu-out}}
BIN=${GPU_BANDWIDTH:-$ROOT/.device/bin/gpu_bandwidth}
PYLIB=$ROOT/.device/pylib
EXPECTED_CC=${EXPECTED_CC:-cc90}
STEP_TIMEOUT=${STEP_TIMEOUT:-120}
mkdir -p "$OUT_DIR"

steps=()     # "name status detail" entries for summary.json
no_gpu=0
failed=0

json_string() {  # a JSON string literal of $1 (backslashes, quotes, control characters escaped)
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/}
  printf '"%s"' "$s"
}

record() {  # record NAME STATUS DETAIL
  steps+=("$(printf '{"step": %s, "status": %s, "detail": %s}' "$(json_string "$1")" "$(json_string "$2")" "$(json_string "$3")")")
  printf '%-22s %-8s %s\n' "$1" "$2" "$3"
  case $2 in failed) failed=1 ;; esac
}

field() {  # field KEY FILE: a top-level string or number value from our one-line JSON (no jq needed)
  sed -n "s/.*\"$1\": \"\{0,1\}\([^\",}]*\)\"\{0,1\}[,}].*/\1/p" "$2" | head -n 1
}

# 1. nvidia-smi as it is
if command -v nvidia-smi >/dev/null 2>&1; then
  if timeout "$STEP_TIMEOUT" nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1; then
    query=$(timeout "$STEP_TIMEOUT" nvidia-smi --query-gpu=gpu_name,count,driver_version,compute_cap \
      --format=csv,noheader 2>&1)
    printf '\n# nvidia-smi --query-gpu=gpu_name,count,driver_version,compute_cap --format=csv,noheader\n%s\n' \
      "$query" >>"$OUT_DIR/nvidia-smi.txt"
    record nvidia-smi ok "$(head -n 1 <<<"$query")"
  else
    record nvidia-smi no-gpu "$(head -n 1 "$OUT_DIR/nvidia-smi.txt")"
    no_gpu=1
  fi
else
  record nvidia-smi no-gpu "no nvidia-smi on PATH"
  no_gpu=1
fi

# 2. our detection with the real nvidia-smi
PY=""
for cand in ${DEVICE_PYTHON:-} python3 python3.13 python3.12 python3.11; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$(command -v "$cand"); break
  fi
done
if [ -z "$PY" ]; then
  record detect-accel skipped "no python3 >= 3.11 on this machine"
elif ! PYTHONPATH="$PYLIB" "$PY" -c 'import archspec' 2>/dev/null; then
  record detect-accel skipped "archspec neither carried ($PYLIB/archspec) nor importable by $PY"
else
  answer=$(cd "$ROOT" && PYTHONPATH="$ROOT:$PYLIB" timeout "$STEP_TIMEOUT" "$PY" -m eessi_pipeline.cli \
    --state-dir "$OUT_DIR/state" detect --accel 2>"$OUT_DIR/detect-accel.err")
  rc=$?
  printf '{"python": %s, "exit_status": %d, "answer": %s, "stderr": %s}\n' "$(json_string "$PY")" "$rc" \
    "$(json_string "$answer")" "$(json_string "$(head -c 2000 "$OUT_DIR/detect-accel.err")")" >"$OUT_DIR/detect-accel.json"
  if [ $rc -ne 0 ]; then
    record detect-accel failed "exit $rc: $(head -n 1 "$OUT_DIR/detect-accel.err")"
  elif [ $no_gpu -eq 1 ] && [ -z "$answer" ]; then
    record detect-accel ok "no GPU: empty answer"
  elif [ "$answer" = "accel/nvidia/$EXPECTED_CC" ]; then
    record detect-accel ok "$answer"
  else
    record detect-accel failed "answered '$answer', expected accel/nvidia/$EXPECTED_CC"
  fi
fi

# 3. device query through our CUDA program: the compute capability must be the target's
if [ ! -x "$BIN" ]; then
  record device-query failed "$BIN is missing: build it (docs/gpu.md) and carry .device/bin"
else
  timeout "$STEP_TIMEOUT" "$BIN" --query >"$OUT_DIR/device-query.json" 2>"$OUT_DIR/device-query.err"
  rc=$?
  cc=$(field cc "$OUT_DIR/device-query.json")
  if [ $rc -eq 2 ]; then
    record device-query no-gpu "$(field message "$OUT_DIR/device-query.json")"
    no_gpu=1
  elif [ $rc -ne 0 ]; then
    record device-query failed "exit $rc: $(head -c 300 "$OUT_DIR/device-query.json" "$OUT_DIR/device-query.err")"
  elif [ "$cc" != "$EXPECTED_CC" ]; then
    record device-query failed "compute capability $cc, expected $EXPECTED_CC"
  else
    record device-query ok "$(field name "$OUT_DIR/device-query.json") $cc runtime $(field runtime_version "$OUT_DIR/device-query.json") driver $(field driver_version "$OUT_DIR/device-query.json")"
  fi

  # 4. bandwidth, two sizes (2^25 and 2^27 doubles per array: 256 MiB and 1 GiB)
  if [ $no_gpu -eq 0 ]; then
    for n in 33554432 134217728; do
      f="$OUT_DIR/bandwidth-$n.json"
      timeout "$STEP_TIMEOUT" "$BIN" --elements "$n" --reps 20 >"$f" 2>"${f%.json}.err"
      rc=$?
      if [ $rc -eq 0 ]; then
        record "bandwidth-$n" ok "copy $(field copy_GBps "$f") GB/s, triad $(field triad_GBps "$f") GB/s"
      else
        record "bandwidth-$n" failed "exit $rc: $(head -c 300 "$f")"
      fi
    done
  else
    record bandwidth skipped "no usable GPU"
  fi
fi

# 5. driver injection from the real ldconfig (a dry run: prints what it would link, writes nothing)
if [ -n "$PY" ] && PYTHONPATH="$PYLIB" "$PY" -c 'import archspec' 2>/dev/null && [ $no_gpu -eq 0 ]; then
  (cd "$ROOT" && PYTHONPATH="$ROOT:$PYLIB" timeout "$STEP_TIMEOUT" "$PY" -m eessi_pipeline.cli \
    --state-dir "$OUT_DIR/state" gpu link-drivers --dry-run --json) >"$OUT_DIR/link-drivers.json" 2>"$OUT_DIR/link-drivers.err"
  rc=$?
  if [ $rc -eq 0 ]; then
    record link-drivers ok "$(grep -c '"lib' "$OUT_DIR/link-drivers.json") driver libraries found for $(field driver_version "$OUT_DIR/link-drivers.json")"
  else
    record link-drivers failed "exit $rc: $(head -n 1 "$OUT_DIR/link-drivers.err")"
  fi
else
  record link-drivers skipped "needs python3 >= 3.11, archspec and a GPU"
fi
# 6. the ReFrame GPU checks (checks/gpu), when ReFrame can run with this machine's python: importable
#    already, or from carried wheels (.device/rfmwheels, unpacked into a scratch dir).  No Lmod is assumed:
#    the configuration uses ReFrame's `nomod` and puts gpu_bandwidth on PATH, so the module smoke checks
#    have nothing to load and only the device query and bandwidth checks run, against the references of
#    the accelerator target RFM_TARGET (default sapphirerapids_cc90: the H200 machine is such a VM).
RFM_TARGET=${RFM_TARGET:-sapphirerapids_cc90}
rfm_path="$ROOT:$PYLIB"
if [ $no_gpu -eq 0 ] && [ -n "$PY" ] && ! PYTHONPATH="$rfm_path" "$PY" -c 'import reframe.frontend.cli' 2>/dev/null && [ -d "$ROOT/.device/rfmwheels" ]; then
  scratch=$(mktemp -d)
  for w in "$ROOT"/.device/rfmwheels/*.whl; do "$PY" -m zipfile -e "$w" "$scratch/site" 2>/dev/null; done
  rfm_path="$ROOT:$PYLIB:$scratch/site"
fi
if [ $no_gpu -eq 1 ]; then
  record reframe skipped "no usable GPU (the checks would only be skipped)"
elif [ -z "$PY" ] || ! PYTHONPATH="$rfm_path" "$PY" -c 'import reframe.frontend.cli' 2>"$OUT_DIR/reframe.err"; then
  record reframe skipped "ReFrame cannot run with ${PY:-no python3}: $(tail -n 1 "$OUT_DIR/reframe.err" 2>/dev/null)"
elif [ ! -x "$BIN" ]; then
  record reframe skipped "no gpu_bandwidth to check"
else
  rfm=$(mktemp -d)
  mkdir -p "$rfm/bin" "$rfm/modules"
  ln -s "$BIN" "$rfm/bin/gpu_bandwidth"
  cat >"$rfm/config.py" <<CFG
site_configuration = {
    "systems": [{
        "name": "device", "hostnames": [".*"], "modules_system": "nomod",
        "partitions": [{"name": "$RFM_TARGET", "scheduler": "local", "launcher": "local",
                        "environs": ["eessi"], "features": ["cpu", "gpu"]}],
    }],
    "environments": [{"name": "eessi"}],
}
CFG
  (cd "$ROOT" && PATH="$rfm/bin:$PATH" PYTHONPATH="$rfm_path" RFM_COLORIZE=n \
    EESSI_PIPELINE_MODULEPATH="$rfm/modules" EESSI_PIPELINE_TARGET="$RFM_TARGET" EESSI_PIPELINE_ACCEL_CC="$EXPECTED_CC" \
    EESSI_PIPELINE_REFERENCES="$ROOT/matrices/references.yaml" EESSI_PIPELINE_SMOKE="$ROOT/matrices/smoke.yaml" \
    timeout 600 "$PY" -c 'import sys; from reframe.frontend.cli import main; sys.argv[0] = "reframe"; main()' \
    -C "$rfm/config.py" -c "$ROOT/checks/gpu/gpu_checks.py" --system "device:$RFM_TARGET" --prefix "$rfm/run" \
    --report-file "$OUT_DIR/reframe-report.json" --nocolor -r) >"$OUT_DIR/reframe.txt" 2>&1
  rc=$?
  summary_line=$(grep -E '^\[ +(PASSED|FAILED) +\] Ran' "$OUT_DIR/reframe.txt" | tail -n 1)
  perf=$(grep -Eo '(Copy|Triad): [0-9.]+ GB/s' "$OUT_DIR/reframe.txt" | tr '\n' ' ')
  if [ $rc -eq 0 ] && grep -q 'PASSED' <<<"$summary_line"; then
    record reframe ok "$summary_line $perf"
    rm -f "$OUT_DIR/reframe.txt"  # the JSON report holds it all; the device tool brings back few files
  else
    record reframe failed "exit $rc: ${summary_line:-$(tail -n 1 "$OUT_DIR/reframe.txt")}"
  fi
  rm -rf "$rfm"
fi
[ -n "${scratch:-}" ] && rm -rf "$scratch"

rm -rf "$OUT_DIR/state"
find "$OUT_DIR" -maxdepth 1 -name '*.err' -empty -delete  # keep only stderr that says something

status=0
[ $no_gpu -eq 1 ] && status=2
[ $failed -eq 1 ] && status=1
{
  printf '{"host": %s, "exit_status": %d, "no_gpu": %s, "steps": [' "$(json_string "$(uname -nm)")" "$status" \
    "$([ $no_gpu -eq 1 ] && echo true || echo false)"
  sep=""
  for s in "${steps[@]}"; do printf '%s\n  %s' "$sep" "$s"; sep=","; done
  printf '\n]}\n'
} >"$OUT_DIR/summary.json"
echo "summary: $OUT_DIR/summary.json (exit $status)"
exit $status
