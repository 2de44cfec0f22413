#!/usr/bin/env bash
# One device call: FSDP2 with world size 1 vs the plain trainer (benchmarks/fsdp_check.py) on a random teacher of
# SmolLM2-135M's shape (the real GGUF is 98 MB, more than one call carries beside the wheels). carry: .whl
#   tools/device_fsdp.sh [fla|torch]   torch: KDA, conv and norm on the PyTorch path (no Triton compile: minutes less)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
. tools/device_lib.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
lease_gpu /tmp/gendistill-fsdp || exit 3
lease_wheels || exit $?
[ "${1:-fla}" = torch ] && export GENDISTILL_KDA_BACKEND=torch
timeout "${2:-300}" python3 benchmarks/fsdp_check.py --random-smollm2 --steps 4 --seq 512 --batch 8 --micro 4 \
  --out "$OUT/fsdp_check_smollm2-shape_h200_${1:-fla}.json" 2>&1 | grep -v -i warn | tail -25
