#!/usr/bin/env bash
# The stage-3a recipe sweep and budget curve of issue 25 on one H200 lease: `gendistill ablate sweep-smollm2-lease`
# (9 cells, 16 distinct stage runs, ~108M training tokens, 7 evaluations) in ONE background process.
# The teacher GGUF (94 MiB), the wheels (19 MiB) and the data (44 MiB) travel in three calls of <= 64 MiB each, each
# with the working tree (~8 MiB).
#
# Here, first (in the checkout the calls send):
#   bash tools/device_wheels.sh                                     (.whl, ~19 MiB)
#   python tools/device_data.py --limit 200                         (.device/carry1: GGUF piece 1 + manifest;
#                                   carry2: piece 2; carry3 ~46 MiB: data and, when two pieces do not fit the first
#                                   two calls, piece 3; it prints each call's total, at most 63 MiB)
#   gendistill ablate sweep-smollm2-lease --dry-run                 (the cells; nothing is written)
# Then, one lease (what lies under /tmp stays between the calls of one lease):
#   call 1:  bash tools/device_sweep.sh setup                       carry [".whl", ".device/carry1"]     (~60 MiB)
#   call 2:  bash tools/device_sweep.sh data                        carry [".device/carry2"]             (~60 MiB)
#            (the teacher is assembled here; with three pieces piece 2 is kept and 'start' assembles it)
#   call 3:  COMMIT=<sha> bash tools/device_sweep.sh start [--set ...] && bash tools/device_sweep.sh watch 480
#                                                                   carry [".device/carry3"]             (~60 MiB)
#   call 4:  bash tools/device_sweep.sh watch 540; bash tools/device_sweep.sh collect      carry []
#   (call 5, if the job still runs: watch + collect again; collect copies what exists, the report is rebuilt after
#    every cell. The machine goes back 30 s after a call ends: put any follow-up in the collect call. On a second
#    machine of the same lease, STEP_CHECK=skip with setup: the trainer's step check passed on the first)
# Settings (environment of the start call): JOB_TIMEOUT (1200 s: the whole ablate command; then the report is
# rebuilt from what finished); extra args after `start` go to `gendistill ablate`, e.g.
#   --set 'stages[stage3b].tokens=1000000'   (every cell's stage 3b: the base recipe's key)
# A grid resumed from an earlier lease (issue 28's mixers: KDA and GLA ran, Gated DeltaNet and Mamba2 wait): unpack
#   that lease's sweep_results.tgz without the examples (mkdir -p .device && tar xzf sweep_results.tgz -C .device
#   --exclude='*/examples' runs/<GRID>; 1.3 MB for the mixers) and carry .device/runs with call 3: `start` puts it
#   where the grid writes, the dry run shows its evaluated cells as skipped, and only the others train.
# Issue 28's mixer lease (GRID=ablate-mixers-smollm2-lease): setup starts `hopper-check` in the background (the
#   block-width backend's bf16 gradient checks: key block 32, else 128; docs/mixers.md); start waits for its verdict
#   (HOPPER_WAIT, 360 s), trains Gated DeltaNet and Mamba2 with the width that passed (or stops: exit 7) and takes the
#   wait out of JOB_TIMEOUT. MIXER_BENCH=1 with setup (any grid) runs benchmarks/mixer_throughput.py for the four
#   mixers there, in the foreground, once per layout (MIXER_BENCH_LAYOUTS, "packed batch"; MIXER_BENCH_TIMEOUT, 300 s
#   each; MIXER_BENCH_LENGTHS, 2048) into res/mixers/<layout>/; collect returns them.
#   `gpu-test SECONDS NODE...` (any call after setup) runs GPU tests alone on the card, e.g. the mixers' checks a
#   lease has not reached: tests/gpu/test_mixers_gpu.py::test_...[case], through tools/gpu_pytest.py (a failure
#   does not fail the tests after it); collect returns gpu_test[_N].log / .json.
# Issue 27 (docs/select.md): a selections lease (every call with GRID=select-smollm2-lease, the start call with
#   SELECT_ONLY=1; 2026-12-07 on an H100: kl-guided 440 s with the alignment, beam-add 347 s) returns
#   select/<method>/ (layers.json, scores.json) in sweep_results.tgz; a grid lease carries the sets to distil as
#   .device/select/<method>/layers.json with call 3 (no SELECT_ONLY: start copies the folder, only the grid runs, on the
#   methods whose file came; uniform is every:4 and always in it), and the grid's earlier results as
#   .device/runs/select-smollm2-lease (its evaluated cells are skipped; unpacked as above). For the next one:
#     for m in kl-guided beam-add; do mkdir -p .device/select/$m
#       cp docs/results/select_smollm2-135m_h100_layers/$m.json .device/select/$m/layers.json; done
#     (greedy-learned's set: docs/results/select_smollm2-135m_h200_layers/greedy-learned.json)
#   Its follow-up, GRID=recall-layers-smollm2-lease (do layers 17 and 18 carry the recall? one cell, two recall tasks;
#   about 6 minutes on a card with the teacher in place): setup, data, then JOB_TIMEOUT=300 start && watch 320; collect.
# Every step has a timeout; the background job writes $RES/DONE (and its exit status) whatever happens.
# fla's kernel configurations: none are set here. gendistill activates its shipped H200 configurations itself
# (gendistill/ops/fla_configs.py) unless FLA_CONFIG_DIR / FLA_CACHE_MODE are set, as device_e2e.sh leaves them unless
# its bench step dumped configurations.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
JOB=${SWEEP_JOB:-/tmp/gendistill-sweep}  # (SWEEP_JOB: another folder, for a check off the device)
RES=$JOB/res                          # logs, steps, summary: what collect returns
DATA=$JOB/data                        # the data folder: recipes and gendistill eval read it (GENDISTILL_DATA_DIR)
GRID=${GRID:-sweep-smollm2-lease}      # any shipped grid or grid file whose output_dir is runs/<GRID>, e.g.
                                      # GRID=ablate-smollm2 (issue 28's ablations) or GRID=sched-smollm2-lease
                                      # (issue 25's stage-3a schedule) in every call of the lease
RUN=$JOB/runs/$GRID                   # the grid's output_dir (relative in the grid: the job runs in $JOB)
OUT=${OUT:-$JOB/out}
. tools/device_lib.sh
export GENDISTILL_DATA_DIR=$DATA
mkdir -p "$JOB" "$RES" "$DATA"
step() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$RES/steps.txt"; }
need() { lease_need "$@" || exit 3; }
gguf() { ls "$JOB"/teacher/*.gguf 2>/dev/null | head -1; }

# Issue 27 (GRID=select-smollm2-lease; with a carried .device/select only the grid part below runs, on the methods
# whose layers.json came): without it the layer-selection methods run on the card first, one after another with the
# card to themselves: beam-add first (it aligns the all-KDA student; kl-guided and greedy-learned reuse it with
# --aligned-from), each under SELECT_TIMEOUT and the job's deadline. Then, unless
# SELECT_ONLY is set, the grid: `tools/select_grid.py` writes the shipped grid's cells of the methods that finished
# (same cells and node ids), and `gendistill ablate` runs it until the deadline. The first lease (docs/results.md
# section 14) ran the selections side by side with the grid's first cell: six processes on one card and 16 host
# cores, each selection aligning its own copy of the same student in 359-398 s; alone, beam-add scored a set in
# 2.8 s. With SELECT_ONLY=1 the lease is the selections alone; carry their select/<method>/layers.json back as
# .device/select for a grid lease (`start` copies it next to the grid's run). Settings: SELECT_TIMEOUT
# (900 s a method), SELECT_METHODS (beam-add kl-guided greedy-learned: the order), JOB_TIMEOUT (the whole job).
SELECT_COMMON=(--budget 7 --heldout-documents 32 --seq-len 1024 --batch-size 8 --micro-batch-size 8
               --eval-sequences 16 --align-steps 100 --recall-kind needle --recall-context 1024 --recall-queries 8
               --recall-prompts 32 --progress lines)
select_args() {  # the method's own settings (docs/select.md, "On the GPU")
  case "$1" in
  kl-guided) echo "--candidate-steps 20" ;;
  greedy-learned) echo "--mix-steps 300" ;;
  beam-add) echo "--beam-width 2 --candidate-steps 0" ;;
  esac
}
select_run() {  # DEADLINE DATA: uniform, then the methods one after another
  local deadline=$1 data=$2 m left first="" from
  step "selection: uniform, then ${SELECT_METHODS:-beam-add kl-guided greedy-learned} one after another" \
    "(timeout ${SELECT_TIMEOUT:-900} s each; job timeout ${JOB_TIMEOUT:-1200} s)"
  (cd "$JOB" && timeout 300 python3 -m gendistill select-layers --teacher "$(gguf)" --data "$data" \
     "${SELECT_COMMON[@]}" --method uniform --out select/uniform) > "$RES/select_uniform.log" 2>&1
  step "select uniform rc=$?"
  for m in ${SELECT_METHODS:-beam-add kl-guided greedy-learned}; do
    left=$(( deadline - $(date +%s) ))
    [ "$left" -gt 60 ] || { step "select $m: not started (${left} s left of the job)"; continue; }
    [ "$left" -gt "${SELECT_TIMEOUT:-900}" ] && left=${SELECT_TIMEOUT:-900}
    from=()  # the first method's aligned student, once it has one
    [ -n "$first" ] && [ -e "$JOB/select/$first/aligned/config.json" ] && from=(--aligned-from "select/$first")
    # shellcheck disable=SC2046  # the method's settings are separate words
    (cd "$JOB" && TRITON_PRINT_AUTOTUNING=1 timeout "$left" python3 -m gendistill select-layers \
       --teacher "$(gguf)" --data "$data" "${SELECT_COMMON[@]}" --method "$m" $(select_args "$m") "${from[@]}" \
       --out "select/$m") > "$RES/select_$m.log" 2>&1
    step "select $m rc=$? ${from[*]}"
    [ -n "$first" ] || first=$m
  done
}
select_driver() {  # the selections (unless carried: .device/select, copied by start), then the grid of the finished
  local deadline=$(( $(date +%s) + ${JOB_TIMEOUT:-1200} )) kept left
  if [ -d "$JOB/select" ]; then
    step "selection results carried: $(cd "$JOB/select" && ls -d -- */ | tr -d / | tr '\n' ' ')(job timeout" \
      "${JOB_TIMEOUT:-1200} s)"
  else
    select_run "$deadline" "$DATA/pretrain_wikipedia_en_00.jsonl.gz"
  fi
  RC=0
  [ -n "${SELECT_ONLY:-}" ] && { step "SELECT_ONLY: no grid"; return; }
  left=$(( deadline - $(date +%s) ))
  kept=$(timeout 60 python3 tools/select_grid.py "$GRID" --root "$JOB" --out "$JOB/select-grid.yaml") \
    || { step "select_grid failed: $kept"; RC=1; return; }
  step "ablate start ($kept; timeout $left s) $*"
  (cd "$JOB" && TRITON_PRINT_AUTOTUNING=1 timeout "$left" python3 -m gendistill ablate select-grid.yaml \
     --set "teacher.spec=$(gguf)" "$@") >> "$RES/ablate.log" 2>&1
  RC=$?
  step "ablate rc=$RC"
  if [ "$RC" != 0 ]; then  # cut or failed: the report from every finished stage run and evaluation
    (cd "$JOB" && timeout 120 python3 -m gendistill ablate select-grid.yaml --set "teacher.spec=$(gguf)" "$@" \
       --report-only) >> "$RES/ablate.log" 2>&1
    step "report rebuilt rc=$?"
  fi
}

case "${1:-}" in
setup)  # preconditions first: a GPU, the carried files; then the wheels, the first GGUF piece, an import check
  lease_gpu "$RES" || exit 3
  need .device/carry1/teacher.gguf.part1 "carry .device/carry1; python tools/device_data.py --limit 200 makes it"
  need .device/carry1/manifest.json "carry .device/carry1"
  grep -q '"layout": "train"' .device/carry1/manifest.json \
    || { echo "error: .device/carry1 is not the train layout (python tools/device_data.py --limit 200)"; exit 3; }
  lease_wheels || exit $?
  mkdir -p "$JOB/teacher"
  cp -f .device/carry1/teacher.gguf.part1 .device/carry1/manifest.json "$JOB/teacher/"
  lease_commit "$RES"
  # the checkout's grid runner and report
  lease_versions gendistill.ablate.runner gendistill.ablate.curve 2>&1 | tee -a "$RES/steps.txt" || exit 5
  if [ "$GRID" = ablate-mixers-smollm2-lease ]; then  # issue 28: Gated DeltaNet's and Mamba2's backward first
    # fla refuses it on Hopper under Triton 3.6 (#640) unless gendistill's block-width backend takes it (on by default,
    # docs/mixers.md): its bf16 check picks the key block the grid trains with, in the background while the teacher
    # and data travel; 'start' waits for the verdict (hopper_key_block.txt). Then the rest of the gradient checks.
    setsid nohup bash tools/device_sweep.sh hopper-check > "$RES/hopper_check.log" 2>&1 < /dev/null &
    step "hopper-check: running in the background, its verdict in hopper_key_block.txt"
  fi
  if [ -n "${MIXER_BENCH:-}" ]; then  # issue 28: each mixer's cost (with the card to itself, except beside the mixer
    # grid's hopper-check); fla autotunes GLA's backward on a fresh card: give it 300 s or more
    # each layout (MIXER_BENCH_LAYOUTS: packed, the trainer's, then batch, prefill's) in its own process and folder
    # (${layout:-packed}: always set here; tools/lease_check.py parses the line with the default)
    for layout in ${MIXER_BENCH_LAYOUTS:-packed batch}; do
      step "benchmarks/mixer_throughput.py --layout $layout --lengths ${MIXER_BENCH_LENGTHS:-2048} (timeout ${MIXER_BENCH_TIMEOUT:-300} s)"
      TRITON_PRINT_AUTOTUNING=1 timeout "${MIXER_BENCH_TIMEOUT:-300}" python3 benchmarks/mixer_throughput.py \
        --mixers kda,gated_deltanet,gla,mamba2 --lengths "${MIXER_BENCH_LENGTHS:-2048}" --layout "${layout:-packed}" \
        --warmup 2 --repeats 5 --out "$RES/mixers/$layout" > "$RES/mixer_throughput_$layout.log" 2>&1
      step "mixer_throughput --layout $layout rc=$? ($(grep -c '^Triton autotuning' "$RES/mixer_throughput_$layout.log") kernels autotuned)"
      grep -v '^Triton\|^Autotuning\|^with key\|^finished\|^best config\|^ *$' "$RES/mixer_throughput_$layout.log" | tail -n 12
    done
  fi
  lease_step_check_background "$RES/step_check.txt" | tee -a "$RES/steps.txt"
  if [ "$GRID" = select-smollm2-lease ]; then  # issue 27: the selection methods' GPU test, beside the step check
    # (its own session: a plain background job died with the call that started it, 2026-12-06). Through
    # tools/gpu_pytest.py (-s: its log names every kernel fla autotunes, for tools/fla_configs_from_log.py; each
    # verdict written when known): two tries were cut at 225-300 s without a verdict, and on 2026-12-07 (beside the
    # selections, plain pytest without -s) kl-guided's case passed and greedy-learned's was cut at 400 s
    TRITON_PRINT_AUTOTUNING=1 setsid nohup bash -c 'timeout $(( $2 + 30 )) python3 tools/gpu_pytest.py --limit "$2" \
      --out "$1/select_gpu" \
      tests/select/test_select_gpu.py > "$1/select_gpu_test.log" 2>&1; echo "tests/select/test_select_gpu.py: rc=$? $(tail -n 1 "$1/select_gpu_test.log")" \
      > "$1/select_gpu_test.txt"' _ "$RES" "${SELECT_GPU_TEST_S:-600}" > /dev/null 2>&1 < /dev/null &
    step "tests/select/test_select_gpu.py: running in the background (limit ${SELECT_GPU_TEST_S:-600} s), its line in" \
      "select_gpu_test.txt"
  fi
  step "setup done"
  ;;
data)  # the second GGUF piece: assemble the teacher and check it against the manifest (three pieces: keep this one,
      # 'start' assembles the teacher with carry3's)
  lease_teacher_piece2 "$JOB/teacher" | tee -a "$RES/steps.txt"
  RC=${PIPESTATUS[0]}; [ "$RC" = 0 ] || exit "$RC"
  ;;
start)  # the teacher's third piece (if any) and the data in place, the grid checked (dry run), then the whole ablate
        # command in the background
  lease_job_running "$RES" && exit 4  # never two jobs on one card
  shift
  if [ -z "$(gguf)" ] && [ "$(lease_gguf_parts "$JOB/teacher")" = 3 ]; then  # the last piece came with the data
    lease_teacher_piece3 "$JOB/teacher" | tee -a "$RES/steps.txt"
    RC=${PIPESTATUS[0]}; [ "$RC" = 0 ] || exit "$RC"
  fi
  [ -n "$(gguf)" ] \
    || { echo "error: no teacher GGUF in $JOB/teacher (run 'setup' and 'data' first in this lease; a third GGUF" \
              "piece travels in .device/carry3)"; exit 3; }
  need .device/carry3/data/pretrain_wikipedia_en_00.jsonl.gz "carry .device/carry3"
  cp -f .device/carry3/data/* "$DATA"/
  # layer-selection results for a grid that reads them (select-smollm2-lease: select/<method>/layers.json)
  [ -d .device/select ] && cp -r .device/select "$JOB/" && step "selection results: $(ls .device/select | tr '\n' ' ')"
  # an earlier lease's collected results of this grid (runs/<GRID> of its sweep_results.tgz, unpacked into
  # .device/runs/<GRID> and carried): its evaluated cells are skipped (they need no students), the rest trains
  if [ -d ".device/runs/$GRID" ] && [ ! -e "$RUN" ]; then
    mkdir -p "$JOB/runs" && cp -r ".device/runs/$GRID" "$RUN" \
      && step "carried results: $(ls "$RUN/cells" 2>/dev/null | tr '\n' ' ')"
  fi
  if [ -e "$RES/hopper_check.log" ]; then  # issue 28: the block-width backend's verdict decides the grid's width
    T0=$(date +%s)
    while [ ! -e "$RES/hopper_key_block.txt" ] && [ $(( $(date +%s) - T0 )) -lt "${HOPPER_WAIT:-360}" ]; do sleep 5; done
    KB=$(cat "$RES/hopper_key_block.txt" 2>/dev/null || echo "no verdict after ${HOPPER_WAIT:-360} s")
    grep 'hopper-check' "$RES/steps.txt"
    case "$KB" in
    32|128) export GENDISTILL_FLA_HOPPER_BK32=1 GENDISTILL_FLA_HOPPER_KEY_BLOCK=$KB
            step "the grid trains Gated DeltaNet and Mamba2 with the block-width backend, key block $KB" ;;
    "not needed") ;;
    *) echo "error: the block-width backend's bf16 check did not pass ($KB): see hopper_kb*.log"
       tail -n 30 "$RES"/hopper_kb*.log; exit 7 ;;
    esac
    # JOB_TIMEOUT counts from this call's start: the wait comes out of it (the lease's budget does not wait)
    JOB_TIMEOUT=$(( ${JOB_TIMEOUT:-1200} - ($(date +%s) - T0) )); export JOB_TIMEOUT
    step "waited $(( $(date +%s) - T0 )) s for the check; the job's timeout is now $JOB_TIMEOUT s"
  fi
  timeout 60 python3 - "$DATA" "$JOB/teacher/manifest.json" <<'PY' 2>&1 | tee -a "$RES/steps.txt" || exit 5
import gzip, json, pathlib, sys
data, m = pathlib.Path(sys.argv[1]), json.loads(pathlib.Path(sys.argv[2]).read_text())
for name in ("pretrain_wikipedia_en_00.jsonl.gz", "t0_train_55k.jsonl.gz"):
    with gzip.open(data / name, "rt") as f:
        n = sum(1 for _ in f)
    if n != m["rows"][name]:
        sys.exit(f"error: {name}: {n} rows, the manifest says {m['rows'][name]}")
print("data:", {name: m["rows"][name] for name in m["rows"]})
PY
  (cd "$JOB" && timeout 180 python3 -m gendistill ablate "$GRID" --set "teacher.spec=$(gguf)" "$@" --dry-run) \
    > "$RES/dry_run.txt" 2>&1 || { cat "$RES/dry_run.txt"; echo "error: the dry run failed"; exit 6; }
  tail -n 4 "$RES/dry_run.txt"
  : > "$RES/driver.log"
  lease_job_start "$RES" "$RES/driver.log" bash tools/device_sweep.sh driver "$@" || exit $?
  ;;
hopper-check)  # (background, issue 28) the block-width backend's bf16 kernel gradients (tests/gpu), key block 32 then
               # 128 (GENDISTILL_FLA_HOPPER_KEY_BLOCK), each in its own process (an illegal memory access loses the
               # CUDA context); the first that passes goes into hopper_key_block.txt ("none": neither; "not needed":
               # fla does not refuse here). Then the remaining gradient and refusal checks with that width.
  export GENDISTILL_FLA_HOPPER_BK32=1 TRITON_PRINT_AUTOTUNING=1
  if ! timeout 60 python3 -c 'import sys; from gendistill.ops import fla_hopper_dqkwg as h; sys.exit(not h.affected())'
  then echo "not needed" > "$RES/hopper_key_block.txt"; step "hopper-check: fla does not refuse here"; exit 0; fi
  for kb in 32 128; do
    GENDISTILL_FLA_HOPPER_KEY_BLOCK=$kb timeout "${HOPPER_CHECK_TIMEOUT:-300}" python3 -m pytest -v -s \
      -p no:cacheprovider -x tests/gpu/test_mixers_gpu.py -k "kernel_gradients and bfloat16 and K64" \
      > "$RES/hopper_kb$kb.log" 2>&1
    rc=$?
    step "hopper-check key block $kb: rc=$rc $(tail -n 1 "$RES/hopper_kb$kb.log" | cut -c1-160)"
    grep 'gradient errors' "$RES/hopper_kb$kb.log" | tee -a "$RES/steps.txt"
    # a verdict is four passes (a skip, e.g. the backend not registered, is none)
    [ "$rc" = 0 ] && [ "$(grep -c 'PASSED' "$RES/hopper_kb$kb.log")" -ge 4 ] \
      && { echo "$kb" > "$RES/hopper_key_block.txt"; break; }
  done
  [ -e "$RES/hopper_key_block.txt" ] || { echo none > "$RES/hopper_key_block.txt"; exit 1; }
  GENDISTILL_FLA_HOPPER_KEY_BLOCK=$(cat "$RES/hopper_key_block.txt") timeout "${HOPPER_REST_TIMEOUT:-400}" \
    python3 -m pytest -v -s -p no:cacheprovider tests/gpu/test_mixers_gpu.py \
    -k "(gradients or refuses) and not (kernel_gradients and bfloat16 and K64)" > "$RES/hopper_rest.log" 2>&1
  step "hopper-check, the other gradient checks: rc=$? $(tail -n 1 "$RES/hopper_rest.log" | cut -c1-160)"
  grep 'gradient errors' "$RES/hopper_rest.log" | tee -a "$RES/steps.txt"
  ;;
gpu-test)  # (foreground, issue 28) `gpu-test SECONDS [pytest args]`: GPU tests alone on the card, bounded, through
           # tools/gpu_pytest.py: after a failure or crash the tests not yet run go on in a new process (a lost CUDA
           # context fails every later test of its process). Each call's log (with every kernel fla autotunes) and
           # verdicts in gpu_test[_N].log / .json, the verdicts in steps.txt too; collect returns them
  lease_job_running "$RES" && exit 4  # the tests alone on the card: not beside a running job
  shift; LIMIT_S=${1:-300}; shift
  step "gpu-test (timeout $LIMIT_S s): $*"
  lease_gpu_test "$RES" "$LIMIT_S" "$@" | tee -a "$RES/steps.txt"
  rc=${PIPESTATUS[0]}
  step "gpu-test rc=$rc"  # its summary line is already in steps.txt (lease_gpu_test prints it)
  ;;
driver)  # (background) the grid, bounded; the report rebuilt from what finished; DONE whatever happens
  shift
  trap 'echo "rc=${RC:-killed}" > "$RES/DONE"' EXIT
  date +%s > "$RES/job_start_epoch"  # tools/lease_record.py: stage runs recorded before it are a carried lease's
  if [ "$GRID" = select-smollm2-lease ]; then select_driver "$@"; exit; fi
  step "ablate start (timeout ${JOB_TIMEOUT:-1200} s) $*"
  # TRITON_PRINT_AUTOTUNING: every kernel fla autotunes (a key the shipped configurations lack) is logged, so
  # `python tools/fla_configs_from_log.py ablate.log DIR --triton-version 3.6.0` can ship it afterwards
  (cd "$JOB" && TRITON_PRINT_AUTOTUNING=1 timeout "${JOB_TIMEOUT:-1200}" python3 -m gendistill ablate "$GRID" \
     --set "teacher.spec=$(gguf)" "$@") > "$RES/ablate.log" 2>&1
  RC=$?
  step "ablate rc=$RC"
  if [ "$RC" != 0 ]; then  # cut or failed: the report from every finished stage run and evaluation
    (cd "$JOB" && timeout 120 python3 -m gendistill ablate "$GRID" --set "teacher.spec=$(gguf)" "$@" --report-only) \
      >> "$RES/ablate.log" 2>&1
    step "report rebuilt rc=$?"
  fi
  ;;
watch)  # follow the job until it finishes or $2 seconds pass; a summary under $OUT either way
  LIMIT_S=${2:-480}; T0=$(date +%s)
  while [ ! -e "$RES/DONE" ] && [ $(( $(date +%s) - T0 )) -lt "$LIMIT_S" ]; do sleep 5; done
  [ -e "$RES/DONE" ] && echo "job finished: $(cat "$RES/DONE")" || echo "job still running"
  cat "$RES/steps.txt" "$RES/step_check.txt" "$RES/select_gpu_test.txt" "$RES/mixers_gpu_test.txt" 2>/dev/null
  for f in "$RES"/select_*.log; do [ -e "$f" ] && echo "${f##*/}: $(grep -v '^Triton\|^ *$' "$f" | tail -n 1 | cut -c1-200)"; done
  grep -E "^\[ablate|held-out|Traceback|Error|error:" "$RES/ablate.log" 2>/dev/null | tail -n 25 | cut -c1-300
  mkdir -p "$OUT"
  { cat "$RES/nvidia-smi.txt" "$RES/commit.txt" "$RES/steps.txt" "$RES/step_check.txt" "$RES/dry_run.txt" \
      "$RES/select_gpu_test.txt" "$RES/mixers_gpu_test.txt" 2>/dev/null
    for f in "$RES"/select_*.log; do [ -e "$f" ] && { echo "== ${f##*/}"; grep -v '^Triton' "$f" | tail -n 8 | cut -c1-300; }; done
    [ -e "$RES/DONE" ] && echo "DONE $(cat "$RES/DONE")" || echo "job still running"
    grep -E "^\[ablate|held-out|Traceback|Error|error:" "$RES/ablate.log" 2>/dev/null | tail -n 80 | cut -c1-300
    tail -n 20 "$RES/ablate.log" 2>/dev/null
  } > "$OUT/summary.txt"
  ;;
collect)  # 8 files: the report (JSON, Markdown, three plots), the summary, the job log, one tarball of the rest
  mkdir -p "$OUT"
  for f in report.json report.md report.png budget_curve.png curves.png; do cp "$RUN/$f" "$OUT/" 2>/dev/null; done
  cp "$RES/ablate.log" "$OUT/" 2>/dev/null
  [ -e "$OUT/summary.txt" ] || bash tools/device_sweep.sh watch 0 > /dev/null
  # every stage run's metrics, recipe and progress; every evaluation's results (examples too, unless too large);
  # every cell's cell.json and metrics; the job's logs. No students, no checkpoints.
  T=/tmp/gendistill_sweep_results.tgz
  # (a selection lease, issue 27: also select/<method>/ without its aligned student, and the grid it ran)
  what=$(cd "$JOB" && ls -d res runs select select-grid.yaml 2>/dev/null)
  # shellcheck disable=SC2086  # the folders are separate words
  (cd "$JOB" && timeout 120 tar czf "$T" --exclude='*.safetensors' --exclude='checkpoints' --exclude='*/student' \
     --exclude='stages/*/stage*/*' --exclude='select/*/aligned' $what 2>/dev/null)
  if [ "$(stat -c %s "$T" 2>/dev/null || echo 0)" -gt $((15 * 2**20)) ]; then
    # shellcheck disable=SC2086
    (cd "$JOB" && timeout 120 tar czf "$T" --exclude='*.safetensors' --exclude='checkpoints' --exclude='*/student' \
       --exclude='stages/*/stage*/*' --exclude='select/*/aligned' --exclude='examples' $what 2>/dev/null)
  fi
  mv "$T" "$OUT/sweep_results.tgz"
  ls -la "$OUT"
  ;;
*) echo "usage: tools/device_sweep.sh setup|data|start [ablate args]|watch [SECONDS]|collect|hopper-check|gpu-test SECONDS [pytest args]"
   exit 2 ;;
esac
