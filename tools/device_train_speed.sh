#!/usr/bin/env bash
# Lease script for training speed (docs/distill.md, "Training speed"): set-up, a driver in the background, and watch
# calls that copy what it has written to $OUT. Device tool, carry [".whl"] (bash tools/device_wheels.sh fills it).
#   call 1:  COMMIT=<sha> bash tools/device_train_speed.sh start PLAN   # set-up, the driver for PLAN, wait up to WAIT s
#   call 2+: bash tools/device_train_speed.sh watch         # wait up to WAIT s more, copy the results
#   then:    bash tools/device_train_speed.sh gpu-test SECONDS [pytest args]   # GPU tests alone, after the driver
#   (or GPU tests first: COMMIT=<sha> bash tools/device_train_speed.sh setup && ... gpu-test SECONDS [pytest args],
#    then start PLAN, which keeps what they wrote)
# PLANs: profile (the baseline step profiled and split into phases, fla's kernel configurations dumped, the first step
# of a fresh Triton cache with those configurations, the parts benchmark); after (on a fresh machine: the first step
# with the shipped configurations, optimized vs baseline rows of the SmolLM2 pair with phases and profiles, the GPU
# tests of the fast paths, the Qwen3-0.6B shape, the FSDP2 check); finish (what 'after' could not finish: today's code
# on a fresh machine, the Qwen3-0.6B shape packed, the FSDP2 check, the GPU suite as it is and with fresh caches);
# gpu_tests (the GPU suite with its autotuning printed, its configurations recovered, then the suite on empty caches
# with them: about 15 minutes, one start call and one watch call); shapes (on a fresh machine, the SmolLM2 pair's
# stage 3a and stage 2 profiled with their ops by input shape, beside the blocks compiled apart (unfused) and the
# bf16-student experiment; the Qwen3-0.6B shape's stage 3a profiled the same way; train_parts --parts residual; the
# GPU suite on empty caches; the
# FSDP2 check with a profiled step of each trainer: about 12 minutes, one start call and one watch call); fusion
# (the SmolLM2 pair's stage 3a alone, fused, unfused and bf16-student: about 3 minutes after set-up); cast (stage 3a
# with the first norm's output in bf16 (optimized), in fp32 (uncast), unfused, and with the attention compiled whole;
# then the GPU suite on empty caches: up to 11 minutes after set-up, so WAIT=540 on the start call and a watch call);
# gate (issue 26: the bounded KDA decay gate's training speed beside the paper gate's, stage 3a and stage 1 in one
# process, then the bounded gate's GPU tests: about 5 minutes after set-up; after a gate-smollm2-lease grid on the
# same machine, `WAIT=300 bash tools/device_train_speed.sh start gate`).
set -u
cd "$(dirname "$0")/.." || exit 2
. tools/device_lib.sh
MODE=${1:-watch}
PLAN=${2:-profile}
WAIT=${WAIT:-540}
RES=/tmp/gendistill_speed
SMOL="--config smollm2-135m --seq 2048 --batch 32 --micro-batches 32 --docs-per-seq 4"

gpu_suite_fresh() {
  # the GPU suite on empty Triton and Inductor caches, as a fresh machine runs it (target: 3 minutes); $1: its time
  # limit in seconds. One test at most 120 s; -s shows the kernels' autotuning records, which pytest would capture;
  # each failure is printed as it happens (tests/gpu/conftest.py), so a run cut by the limit still says why
  local t
  t=$(date +%s)
  TRITON_CACHE_DIR="$RES/triton_fresh" TORCHINDUCTOR_CACHE_DIR="$RES/inductor_fresh" TRITON_PRINT_AUTOTUNING=1 \
    timeout "$1" python3 -m pytest -v -s -p no:cacheprovider --timeout 120 --durations=0 tests/gpu \
    > "$RES/pytest_gpu_fresh.log" 2>&1
  echo "pytest_gpu_fresh rc=$? wall=$(( $(date +%s) - t ))s autotuned=$(grep -c 'Triton autotuning for function' \
    "$RES/pytest_gpu_fresh.log")" >> "$RES/steps.txt"
}

driver_profile() {
  python3 benchmarks/train_throughput.py $SMOL --stages stage3a,stage1,stage2 --steps 3 --warmup 1 --phases \
    --profile "$RES/prof" --dump-fla-configs "$RES/fla_configs" --out "$RES/tt_base.json" > "$RES/tt_base.log" 2>&1
  echo "tt_base rc=$?" >> "$RES/steps.txt"
  # a fresh Triton cache with the configurations just dumped: the first step a new machine would see
  TRITON_CACHE_DIR="$RES/triton_fresh" FLA_CONFIG_DIR="$RES/fla_configs" FLA_CACHE_MODE=strict TRITON_PRINT_AUTOTUNING=1 \
    timeout 300 python3 benchmarks/train_throughput.py $SMOL --stages stage3a,stage1,stage2 --steps 2 --warmup 1 \
    --out "$RES/tt_fresh_configs.json" > "$RES/tt_fresh_configs.log" 2>&1
  echo "tt_fresh_configs rc=$? autotuned=$(grep -c 'autotuning' "$RES/tt_fresh_configs.log")" >> "$RES/steps.txt"
  timeout 400 python3 benchmarks/train_parts.py --out "$RES/parts.json" > "$RES/parts.log" 2>&1
  echo "parts rc=$?" >> "$RES/steps.txt"
}

driver_after() {
  # first, on the fresh machine: the first step with the shipped configurations (TRITON_PRINT_AUTOTUNING logs any
  # kernel they miss), then optimized vs baseline rows of the same run
  TRITON_PRINT_AUTOTUNING=1 timeout 360 python3 benchmarks/train_throughput.py $SMOL --stages stage3a,stage1,stage2 \
    --variants optimized,baseline --steps 3 --warmup 1 --phases --profile "$RES/prof" \
    --dump-fla-configs "$RES/fla_configs" --out "$RES/tt_after.json" > "$RES/tt_after.log" 2>&1
  echo "tt_after rc=$? autotuned=$(grep -c 'Triton autotuning for function' "$RES/tt_after.log")" >> "$RES/steps.txt"
  TRITON_PRINT_AUTOTUNING=1 timeout 240 python3 -m pytest -v -x --durations=0 tests/gpu/test_distill_gpu.py \
    > "$RES/pytest_gpu.log" 2>&1
  echo "pytest_gpu rc=$?" >> "$RES/steps.txt"
  TRITON_PRINT_AUTOTUNING=1 timeout 240 python3 benchmarks/train_throughput.py --config qwen3-0.6b --seq 4096 \
    --batch 16 --micro-batches 4 --docs-per-seq 4 --stages stage3a,stage1 --variants optimized,baseline --steps 2 \
    --warmup 1 --phases \
    --dump-fla-configs "$RES/fla_configs" --out "$RES/tt_qwen3.json" > "$RES/tt_qwen3.log" 2>&1
  echo "tt_qwen3 rc=$? autotuned=$(grep -c 'Triton autotuning for function' "$RES/tt_qwen3.log")" >> "$RES/steps.txt"
  timeout 240 python3 benchmarks/fsdp_check.py --random-smollm2 --steps 8 --seq 2048 --batch 16 --micro 8 --profile-step 6 \
    --out "$RES/fsdp_check.json" > "$RES/fsdp_check.log" 2>&1
  echo "fsdp_check rc=$?" >> "$RES/steps.txt"
}

driver_finish() {
  # a fresh machine: the SmolLM2 pair's optimized rows first (first-step latency of today's code), then the
  # Qwen3-0.6B shape packed as training packs it, the FSDP2 check, and the GPU suite twice: as the machine now is,
  # then with empty Triton/Inductor caches and the configurations that run autotuned added (a fresh machine's time)
  TRITON_PRINT_AUTOTUNING=1 timeout 200 python3 benchmarks/train_throughput.py $SMOL --stages stage3a,stage1,stage2 \
    --variants optimized --steps 3 --warmup 1 --phases --out "$RES/tt_smol.json" > "$RES/tt_smol.log" 2>&1
  echo "tt_smol rc=$? autotuned=$(grep -c 'Triton autotuning for function' "$RES/tt_smol.log")" >> "$RES/steps.txt"
  QWEN="--config qwen3-0.6b --seq 4096 --batch 16 --micro-batches 8 --docs-per-seq 4 --stages stage3a,stage1,stage2"
  TRITON_PRINT_AUTOTUNING=1 timeout 300 python3 benchmarks/train_throughput.py $QWEN --variants optimized --steps 3 \
    --warmup 1 --phases --dump-fla-configs "$RES/fla_configs" --out "$RES/tt_qwen3.json" > "$RES/tt_qwen3.log" 2>&1
  rc=$?
  echo "tt_qwen3 rc=$rc autotuned=$(grep -c 'Triton autotuning for function' "$RES/tt_qwen3.log")" >> "$RES/steps.txt"
  if [ "$rc" != 0 ] && [ "$rc" != 124 ]; then  # a shipped configuration that does not fit this shape: autotune all
    GENDISTILL_FLA_CONFIGS=0 TRITON_PRINT_AUTOTUNING=1 timeout 240 python3 benchmarks/train_throughput.py $QWEN \
      --variants optimized --steps 2 --warmup 1 --phases --out "$RES/tt_qwen3_tuned.json" > "$RES/tt_qwen3_tuned.log" 2>&1
    echo "tt_qwen3_tuned rc=$?" >> "$RES/steps.txt"
  fi
  timeout 240 python3 benchmarks/fsdp_check.py --random-smollm2 --steps 8 --seq 2048 --batch 16 --micro 8 --profile-step 6 \
    --out "$RES/fsdp_check.json" > "$RES/fsdp_check.log" 2>&1
  echo "fsdp_check rc=$?" >> "$RES/steps.txt"
  t=$(date +%s)
  TRITON_PRINT_AUTOTUNING=1 timeout 420 python3 -m pytest -v -s -p no:cacheprovider --durations=0 tests/gpu \
    > "$RES/pytest_gpu.log" 2>&1
  echo "pytest_gpu rc=$? wall=$(( $(date +%s) - t ))s autotuned=$(grep -c 'Triton autotuning for function' \
    "$RES/pytest_gpu.log")" >> "$RES/steps.txt"
  lease_shipped_configs "$RES/fla_tests"
  for log in tt_smol tt_qwen3 pytest_gpu; do
    python3 tools/fla_configs_from_log.py --triton-version "$TRITON_VERSION" "$RES/$log.log" "$RES/fla_tests" >> "$RES/steps.txt" 2>&1
  done
  FLA_CONFIG_DIR="$RES/fla_tests" FLA_CACHE_MODE=strict gpu_suite_fresh 300
}

driver_shapes() {
  # the first command of a fresh machine: the first step with the shipped configurations, then where each step's
  # device time goes by op and by input shape (what every copy, add and cast moves), beside the blocks compiled as
  # before the feed-forward fusion and the speed ceiling of a bf16 residual stream (train_throughput.py --variants)
  TRITON_PRINT_AUTOTUNING=1 timeout 240 python3 benchmarks/train_throughput.py $SMOL --stages stage3a,stage2 \
    --variants optimized,unfused,bf16-student --steps 8 --warmup 1 --phases --profile "$RES/prof" \
    --out "$RES/tt_smol.json" > "$RES/tt_smol.log" 2>&1
  echo "tt_smol rc=$? autotuned=$(grep -c 'Triton autotuning for function' "$RES/tt_smol.log")" >> "$RES/steps.txt"
  # second, because its checks are owed before any figure counts: the GPU suite (the trainer's fast paths against
  # the reference step among it) on empty Triton and Inductor caches, as a fresh machine runs it (target: 3 minutes)
  gpu_suite_fresh 330
  # micro-batches of 8 rows peak at 72 GiB on an H200: 4 on a card of less memory
  local mb=8
  [ "$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)" -lt 100000 ] && mb=4
  TRITON_PRINT_AUTOTUNING=1 timeout 240 python3 benchmarks/train_throughput.py --config qwen3-0.6b --seq 4096 \
    --batch 16 --micro-batches $mb --docs-per-seq 4 --stages stage3a --variants optimized,unfused,bf16-student --steps 5 \
    --warmup 1 --phases --profile "$RES/prof" --out "$RES/tt_qwen3.json" > "$RES/tt_qwen3.log" 2>&1
  echo "tt_qwen3 rc=$? autotuned=$(grep -c 'Triton autotuning for function' "$RES/tt_qwen3.log")" >> "$RES/steps.txt"
  # a block with its residual stream three ways: time and error against float64 (the bf16 design's evidence)
  timeout 150 python3 benchmarks/train_parts.py --parts residual --out "$RES/parts_residual.json" \
    > "$RES/parts_residual.log" 2>&1
  echo "parts_residual rc=$?" >> "$RES/steps.txt"
  timeout 200 python3 benchmarks/fsdp_check.py --random-smollm2 --steps 8 --seq 2048 --batch 16 --micro 8 \
    --profile-step 6 --out "$RES/fsdp_check.json" > "$RES/fsdp_check.log" 2>&1
  echo "fsdp_check rc=$?" >> "$RES/steps.txt"
}

driver_fusion() {
  # the smallest lease: the SmolLM2 pair's stage 3a, the blocks fused and apart and the bf16-student ceiling, phases
  timeout 200 python3 benchmarks/train_throughput.py $SMOL --stages stage3a --variants optimized,unfused,bf16-student \
    --steps 8 --warmup 1 --phases --out "$RES/tt_smol.json" > "$RES/tt_smol.log" 2>&1
  echo "tt_smol rc=$?" >> "$RES/steps.txt"
}

driver_cast() {
  # the first norm's bf16 output against the fp32 one (uncast), §8's blocks (unfused) and the attention modules
  # left eager (eager-attention; compiled whole is the trainer's default, its whole-step check in tests/gpu), 8 steps a
  # row; then the GPU suite on empty caches, now that the fused loss no longer imports fla before its configurations
  # are set (target: 3 minutes), each failure printed as it happens (tests/gpu/conftest.py)
  # (a short lease: CAST_VARIANTS=optimized,uncast,eager-attention SUITE_S=0 leaves out the unfused row and the suite)
  timeout 360 python3 benchmarks/train_throughput.py $SMOL --stages stage3a \
    --variants "${CAST_VARIANTS:-optimized,uncast,eager-attention,unfused}" --steps 8 --warmup 1 --phases \
    --out "$RES/tt_smol.json" > "$RES/tt_smol.log" 2>&1
  echo "tt_smol rc=$?" >> "$RES/steps.txt"
  [ "${SUITE_S:-300}" -gt 0 ] && gpu_suite_fresh "${SUITE_S:-300}"
  return 0
}

driver_gate() {
  # the bounded gate (kda_gate_lower_bound -5: fla's safe_gate kernels, docs/mixers.md) against the paper's, one
  # process, 8 steps a row: what the faster kernels give a training step (the quality at equal tokens is the
  # gate-smollm2-lease grid's); then its GPU tests (fla's safe_gate kernel and the mixer against the float64
  # reference, forward, gradients, cached decode), each verdict written as it comes (tools/gpu_pytest.py)
  # (a short lease: GATE_STAGES=stage3a GATE_TEST_S=120)
  TRITON_PRINT_AUTOTUNING=1 timeout 300 python3 benchmarks/train_throughput.py $SMOL --stages "${GATE_STAGES:-stage3a,stage1}" \
    --variants optimized,bounded-gate --steps 8 --warmup 1 --phases --out "$RES/tt_gate.json" > "$RES/tt_gate.log" 2>&1
  echo "tt_gate rc=$? autotuned=$(grep -c 'Triton autotuning for function' "$RES/tt_gate.log")" >> "$RES/steps.txt"
  lease_gpu_test "$RES" "${GATE_TEST_S:-200}" tests/gpu/test_kda_gpu.py -k bounded >> "$RES/steps.txt"
  echo "gate gpu-test rc=$?" >> "$RES/steps.txt"
}

driver_gpu_tests() {
  # every kernel configuration the GPU suite needs, then the suite's time on empty caches with them: pytest -s (the
  # autotuning records are printed by the kernels, which pytest would otherwise capture), one test at most 120 s
  t=$(date +%s)
  TRITON_PRINT_AUTOTUNING=1 timeout 520 python3 -m pytest -v -s -p no:cacheprovider --timeout 120 --durations=0 \
    tests/gpu > "$RES/pytest_gpu_tune.log" 2>&1
  echo "pytest_gpu_tune rc=$? wall=$(( $(date +%s) - t ))s autotuned=$(grep -c 'Triton autotuning for function' \
    "$RES/pytest_gpu_tune.log")" >> "$RES/steps.txt"
  lease_shipped_configs "$RES/fla_tests"
  python3 tools/fla_configs_from_log.py --triton-version "$TRITON_VERSION" "$RES/pytest_gpu_tune.log" "$RES/fla_tests" \
    >> "$RES/steps.txt" 2>&1
  FLA_CONFIG_DIR="$RES/fla_tests" FLA_CACHE_MODE=strict gpu_suite_fresh 400
}

collect() {
  mkdir -p "$OUT"
  # at most 8 files come back: everything goes into one archive, built outside $OUT
  tar czf /tmp/gendistill_results.tgz -C "$RES" --exclude triton_fresh --exclude inductor_fresh . && mv /tmp/gendistill_results.tgz "$OUT/"
  ls -la "$OUT"
}

case "$MODE" in
  setup|start)  # setup alone: the machine ready for gpu-test, no driver; start after it keeps what gpu-test wrote
    lease_job_running "$RES" && exit 4  # never two drivers on one card, nor a set-up under a running one
    if [ "$MODE" = setup ] || [ ! -e "$RES/SET_UP" ]; then
      rm -rf "$RES"; mkdir -p "$RES"
      lease_gpu "$RES" || exit 3
      lease_wheels || exit $?
      lease_versions gendistill.distill.trainer || exit 5
      lease_commit "$RES"
      touch "$RES/SET_UP"
    fi
    [ "$MODE" = setup ] && exit 0
    : > "$RES/driver.log"
    lease_job_start "$RES" "$RES/driver.log" bash tools/device_train_speed.sh driver "$PLAN" || exit $?
    ;;
  gpu-test)  # after the driver (watch until DONE first): `gpu-test SECONDS [pytest args]`, GPU tests alone on the card
             # (lease_gpu_test), their verdicts into steps.txt, then everything collected again
    lease_job_running "$RES" && exit 4  # the tests alone on the card: not beside a running driver
    shift; LIMIT_S=${1:-300}; shift
    lease_gpu_test "$RES" "$LIMIT_S" "$@" | tee -a "$RES/steps.txt"
    echo "gpu-test rc=${PIPESTATUS[0]}: $*" >> "$RES/steps.txt"
    collect
    exit 0
    ;;
  driver)
    TRITON_VERSION=$(python3 -c "import triton; print(triton.__version__)")  # written into recovered config files
    "driver_$PLAN"
    touch "$RES/DONE"
    exit 0
    ;;
esac
t0=$(date +%s)
while [ ! -e "$RES/DONE" ] && [ $(( $(date +%s) - t0 )) -lt "$WAIT" ]; do sleep 5; done
[ -e "$RES/DONE" ] && echo "driver finished" || echo "driver still running"
cat "$RES/steps.txt" 2>/dev/null
for f in "$RES"/*.log; do echo "== $f"; grep -v -i -E 'warn|autotuning kernel|^with key|^finished after|^best config' "$f" | tail -n 14 | cut -c1-300; done
collect
