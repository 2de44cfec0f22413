#!/usr/bin/env bash
# Lease script for training speed (docs/distill.md, "Training speed"): set-up, a driver in the background, and watch
# calls that copy what it has written to $OUT. Device tool, carry [".whl"] (tools/device_env.sh lists the wheels).
#   call 1:  bash tools/device_train_speed.sh start PLAN    # set-up, start the driver for PLAN, wait up to WAIT s
#   call 2+: bash tools/device_train_speed.sh watch         # wait up to WAIT s more, copy the results
# PLANs: profile (the baseline step profiled and split into phases, fla's kernel configurations dumped, the first step
# of a fresh Triton cache with those configurations, the parts benchmark).
set -u
MODE=${1:-watch}
PLAN=${2:-profile}
WAIT=${WAIT:-540}
RES=/tmp/gendistill_speed
SMOL="--config smollm2-135m --seq 2048 --batch 32 --micro-batches 32 --docs-per-seq 4"

driver_profile() {
  python3 benchmarks/train_throughput.py $SMOL --stages stage3a,stage1,stage2 --steps 3 --warmup 1 --phases \
    --profile "$RES/prof" --dump-fla-configs "$RES/fla_configs" --out "$RES/tt_base.json" > "$RES/tt_base.log" 2>&1
  echo "tt_base rc=$?" >> "$RES/steps.txt"
  # a fresh Triton cache with the configurations just dumped: the first step a new machine would see
  TRITON_CACHE_DIR="$RES/triton_fresh" FLA_CONFIG_DIR="$RES/fla_configs" FLA_CACHE_MODE=fuzzy TRITON_PRINT_AUTOTUNING=1 \
    timeout 300 python3 benchmarks/train_throughput.py $SMOL --stages stage3a,stage1,stage2 --steps 2 --warmup 1 \
    --out "$RES/tt_fresh_configs.json" > "$RES/tt_fresh_configs.log" 2>&1
  echo "tt_fresh_configs rc=$? autotuned=$(grep -c 'autotuning' "$RES/tt_fresh_configs.log")" >> "$RES/steps.txt"
  timeout 400 python3 benchmarks/train_parts.py --out "$RES/parts.json" > "$RES/parts.log" 2>&1
  echo "parts rc=$?" >> "$RES/steps.txt"
}

collect() {
  mkdir -p "$OUT"
  cp "$RES"/*.json "$RES"/*.log "$RES"/*.txt "$OUT"/ 2>/dev/null
  [ -d "$RES/prof" ] && tar czf "$OUT/prof.tgz" -C "$RES" prof
  [ -d "$RES/fla_configs" ] && tar czf "$OUT/fla_configs.tgz" -C "$RES" fla_configs
  # at most 8 files come back: everything small goes into one archive
  (cd "$OUT" && tar czf results.tgz --exclude results.tgz --exclude prof.tgz --exclude fla_configs.tgz . \
     && find . -maxdepth 1 -type f ! -name '*.tgz' -delete)
  ls -la "$OUT"
}

case "$MODE" in
  start)
    . tools/device_env.sh || exit 4
    rm -rf "$RES"; mkdir -p "$RES"
    nvidia-smi > "$RES/nvidia-smi.txt" 2>&1
    git rev-parse HEAD > "$RES/commit.txt" 2>/dev/null || echo "no git" > "$RES/commit.txt"
    setsid nohup bash tools/device_train_speed.sh driver "$PLAN" > "$RES/driver.log" 2>&1 < /dev/null &
    ;;
  driver)
    "driver_$PLAN"
    touch "$RES/DONE"
    exit 0
    ;;
esac
t0=$(date +%s)
while [ ! -e "$RES/DONE" ] && [ $(( $(date +%s) - t0 )) -lt "$WAIT" ]; do sleep 5; done
[ -e "$RES/DONE" ] && echo "driver finished" || echo "driver still running"
cat "$RES/steps.txt" 2>/dev/null
tail -n 25 "$RES"/tt_base.log "$RES"/tt_fresh_configs.log "$RES"/parts.log 2>/dev/null | cut -c1-400
collect
