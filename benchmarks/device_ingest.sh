#!/usr/bin/env bash
# The ingest benchmark on a many-core machine (issue 15): real-software tarball on 1, 2, 4, 8 and 16
# cores against zlib-6 + SHA-1 on the same cores, and the peak RSS of a 2 GiB member.  Writes
# $OUT/ingest.json and $OUT/ingest.log.  Nothing is downloaded: the machine needs Python 3.11 with
# numpy and cryptography importable, either its own, this checkout's .venv, or build/device-site
# made here beforehand with `bash benchmarks/device_ingest.sh --prepare` (then carry build/device-site).
#
#   CORES=1,2,4,8,16 REPEAT=2 RSS_GIB=2 bash benchmarks/device_ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=build/device-site

if [ "${1:-}" = "--prepare" ]; then
    rm -rf "$SITE"
    .venv/bin/python -m pip install --quiet --target "$SITE" --no-deps \
        "numpy==$(.venv/bin/python -c 'import numpy; print(numpy.__version__)')" \
        "cryptography==$(.venv/bin/python -c 'import cryptography; print(cryptography.__version__)')" \
        "cffi==$(.venv/bin/python -c 'import cffi; print(cffi.__version__)')" pycparser
    find "$SITE" -depth \( -name tests -o -name __pycache__ -o -name '*.pyi' -o -name '*.pxd' \) -exec rm -rf {} +
    rm -rf "$SITE"/numpy/{f2py,distutils,_core/include,_pyinstaller,typing,random,polynomial,fft,testing,doc} \
        "$SITE"/*.dist-info/RECORD  # not imported by the benchmark: keeps the carry under 64 MiB
    du -sh "$SITE"
    exit 0
fi

OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=""
for cand in "${PYTHON:-}" .venv/bin/python python3.11 python3; do
    [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 || continue
    if PYTHONPATH="$PWD/$SITE" "$cand" -c 'import numpy, cryptography, sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        PY=$cand
        break
    fi
done
if [ -z "$PY" ]; then
    echo "device_ingest: no Python 3.11 with numpy and cryptography; run 'bash benchmarks/device_ingest.sh --prepare' here and carry $SITE" >&2
    exit 2
fi
echo "device_ingest: $($PY -V) ($PY), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" | tee "$OUT/ingest.log"
PYTHONPATH="$PWD/$SITE" "$PY" benchmarks/ingest_bench.py \
    --cores-list "${CORES:-1,2,4,8,16}" --repeat "${REPEAT:-2}" --rss-gib "${RSS_GIB:-2}" --min-mb "${MIN_MB:-220}" \
    --work "${WORK:-/tmp/eessi-ingest-bench}" --json "$OUT/ingest.json" >/dev/null 2>>"$OUT/ingest.log"
tail -n 20 "$OUT/ingest.log"
"$PY" - "$OUT/ingest.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
for k, c in r["cores"].items():
    print(f"{k:>2} cores: ingest {c['ingest_s']:.2f} s, limit {c['limit_s']:.2f} s, ratio {c['ratio_limit_over_ingest']:.2f}, "
          f"speed-up {r.get('speedup_vs_1_core', {}).get(k, float('nan')):.2f}")
for kind in ("chunked", "whole"):
    b = r.get(f"big_member_{kind}")
    if b:
        print(f"{b['member_bytes'] / 2**30:.2f} GiB member ({kind}): peak RSS {b['max_rss_mb']:.0f} MB, {b['seconds']:.1f} s")
PYEOF
