#!/usr/bin/env bash
# One device call for the prefill-speed work (benchmarks/prefill_profile.py), run from the repository root:
#   tools/device_prefill.sh profile   before/after profiles (.device/before = the code before the change, prepared here
#                                     with: git archive <commit> src benchmarks | tar -x -C .device/before, plus the
#                                     current benchmarks/prefill_profile.py), then the forward GPU tests
#   tools/device_prefill.sh bench     GPU tests of the changed paths, then the full inference benchmark
# carry: .whl .device. Everything that must come back is written under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
. tools/device_lib.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); stamp() { echo "[lease +$(( $(date +%s) - T0 ))s] $*"; }
lease_gpu "$OUT" || exit 3
lease_wheels || exit $?
stamp "setup done"
case "${1:-}" in
profile)
  (cd .device/before && PYTHONPATH=/tmp/site timeout 200 python3 benchmarks/prefill_profile.py --label before \
     --contexts 4k,128k --skip layer,peer --out "$OUT") 2>&1 | grep -v Warning | tail -8
  stamp "before done"
  timeout 200 python3 benchmarks/prefill_profile.py --label after --contexts 4k,128k --layer-contexts 1k,4k,32k,128k \
     --out "$OUT" 2>&1 | grep -v Warning | tail -16
  stamp "after done"
  timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_fused_layers_gpu.py tests/gpu/test_kda_gpu.py \
     -k "not gradients" 2>&1 | tail -5
  stamp "tests done"
  ;;
bench)
  timeout 330 python3 benchmarks/bench_inference.py --config qwen3-0.6b --device cuda --dtype bf16 \
     --out "$OUT/bench" --time-limit 300 2>&1 | grep -v Warning | tail -40
  stamp "bench done"
  timeout 100 python3 benchmarks/prefill_profile.py --label "${2:-current}" --skip model \
     --layer-contexts 1k,4k,32k,128k --out "$OUT" 2>&1 | grep -v Warning | tail -11
  stamp "layer profile done"
  timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_fused_layers_gpu.py tests/gpu/test_kda_gpu.py \
     -k "not gradients and not model_on_fla" 2>&1 | tail -5
  stamp "tests done"
  ;;
*) echo "usage: tools/device_prefill.sh profile|bench"; exit 2 ;;
esac
