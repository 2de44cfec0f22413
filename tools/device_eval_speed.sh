#!/usr/bin/env bash
# Evaluation speed on one GPU (issue 24): benchmarks/eval_speed.py (fast path vs reference path vs lm-eval's HF backend
# on the same examples, teacher + a student converted on the fly, the nine built-in tasks x 500, both protocols), then
# the whole `gendistill eval` command timed. One lease, four back-to-back calls (the machine is given back 30 s after
# a call ends; at most 10 minutes and 64 MiB a call, the working tree's ~7.7 MiB included; what lies under /tmp stays
# between the calls of one lease):
#
# Here, first:   bash tools/device_wheels.sh                      (.whl ~20 MiB: transformers, fla, gguf, lm-eval, ...)
#                python tools/device_data.py --layout eval --limit 500
#                  (.device/carry1: GGUF piece 1 + manifest; carry2: piece 2 + data/, the 500 selected examples of each
#                  task, the few-shot pools, the t0 rows (~2.4 MiB); carry3: piece 3, written only when two pieces do
#                  not fit the first two calls. It prints each call's total (at most 63 MiB) and which calls carry
#                  what. 2026-12-06, 94 MiB GGUF: three pieces of 19.3, 36.1 and 38.4 MiB, 46.1 MiB each call)
#   call 1:  bash tools/device_eval_speed.sh setup                                                    (~1 minute)
#            carry [".whl", ".device/carry1/teacher.gguf.part1", ".device/carry1/manifest.json"]      (~46 MiB)
#   call 2:  bash tools/device_eval_speed.sh data                   carry [".device/carry2"]          (~46 MiB)
#            (the examples put in place; piece 2 kept for 'start', or with two pieces the teacher assembled here)
#   call 3:  bash tools/device_eval_speed.sh start && bash tools/device_eval_speed.sh watch 530
#            carry [".device/carry3"]  (three pieces: the teacher assembled here, ~46 MiB; two pieces: carry [])
#   call 4:  bash tools/device_eval_speed.sh watch 540; bash tools/device_eval_speed.sh collect          (carry [])
# (With two pieces the older shape still works: no 'data' call, carry [".device/carry2"] with 'start'.)
# The job runs in the background (setsid nohup) from call 3 on, so it outlives a call; every step has a timeout, and
# collect copies what exists (eval_speed.py rewrites its JSON after every row). At most 8 files come back: collect
# puts the JSON, the summary and one tarball of everything under $OUT.
# Settings (environment, start call): LIMIT (500), REF_LIMIT (50: the reference path is HF generate at batch 8, the
# slow part), LM_LIMIT (50,loglik=500: lm-eval scores 500 log-likelihood examples in seconds, and on 50 the
# comparison measured mostly a call's fixed cost, docs/results.md §9b; its generation is the slow part), LM_BS (64),
# CLI (both | after | off: `gendistill eval` timed before the in-process runs, on a fresh machine's empty caches,
# and after them, warm; 'after' only the warm one), JOB_TIMEOUT (1080 s for the whole script), SWEEP (scales of the
# batch planner's fixed-cost estimate, e.g. 1,3,10,1e6 — not 0, 20-80x slower,
# docs/results.md §9b: the teacher's fast path on the sweep tasks once per scale, first), PROFILE (non-empty: torch.profiler tables of the teacher's fast path
# on the sweep tasks, first; they come back in the tarball), SWEEP_TASKS (default mmlu,boolq,hellaswag,arc_easy),
# STUDENT (convert | none: the teacher alone), DTYPE (auto: bf16 on the card; float32 makes the fast and reference
# paths' identical-answer counts exact, docs/results.md section 9), PATHS (fast,reference,lm-eval; e.g. fast,reference
# for an fp32 identity run without lm-eval).
# The 2026-12-04 lease (docs/results.md §9) took 16.7 min to the command with REF_LIMIT=50 and
# LM_LIMIT=50 and was cut there by JOB_TIMEOUT=1000: the command was then run by hand (141.9 s).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
JOB=/tmp/gendistill-eval-speed
RES=$JOB/res
OUT=${OUT:-$JOB/out}
. tools/device_lib.sh
export GENDISTILL_DATA_DIR=$JOB/data
mkdir -p "$JOB" "$RES"
step() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$RES/steps.txt"; }
need() { lease_need "$@" || exit 3; }
gguf() { ls "$JOB"/teacher/*.gguf 2>/dev/null | head -1; }
teacher() {  # lease_teacher_piece2 / lease_teacher_piece3 (tools/device_lib.sh) on the job's teacher, its line a step
  local line rc
  line=$("lease_teacher_piece$1" "$JOB/teacher"); rc=$?
  [ "$rc" = 0 ] || { echo "$line"; exit "$rc"; }
  step "$line"
}
examples() {  # the examples (and pools, t0 rows) of a carry folder's data/ into the job's data folder
  [ -d "$1/data" ] || return 0
  cp -f "$1"/data/* "$JOB/data/" || exit 5
  step "examples from $1/data: $(ls "$1/data" | wc -l) files"
}

case "${1:-}" in
setup)  # preconditions first: a GPU, the carried files, the wheels installed and lm-eval's HFLM importable
  lease_gpu "$RES" || exit 3
  for f in .device/carry1/teacher.gguf.part1 .device/carry1/manifest.json; do
    need "$f" "carry it; python tools/device_data.py --layout eval makes it"
  done
  grep -q '"layout": "eval"' .device/carry1/manifest.json \
    || { echo "error: .device/carry1 is not the eval layout (python tools/device_data.py --layout eval)"; exit 3; }
  lease_wheels "lm_eval-*.whl" || exit $?
  mkdir -p "$JOB/teacher" "$JOB/data"
  cp -f .device/carry1/teacher.gguf.part1 .device/carry1/manifest.json "$JOB/teacher/"
  step "GGUF in $(lease_gguf_parts "$JOB/teacher") pieces: 'data' carries .device/carry2$(
    [ "$(lease_gguf_parts "$JOB/teacher")" = 3 ] && echo ", 'start' .device/carry3")"
  lease_commit "$RES"
  # lm-eval's HF backend and the checkout's evaluator
  lease_versions lm_eval.api.instance lm_eval.models.huggingface gendistill.eval.generate gendistill.eval.loglik 2>&1 \
    | tee -a "$RES/steps.txt" || exit 5
  # the fast engine's GPU check (real CUDA graphs, fp32 tiny teacher and hybrid): the benchmark means nothing without it
  timeout 240 python3 -m pytest -q -x -p no:cacheprovider --timeout 200 tests/gpu/test_fast_generate_gpu.py 2>&1 \
    | tail -n 15 | tee "$RES/gpu_test.txt"
  ;;
data)  # carry2: the examples in place; the second GGUF piece assembled with the first and checked against the manifest
      # (three pieces: kept, 'start' assembles the teacher with carry3's)
  need "$JOB/teacher/manifest.json" "run 'setup' first in this lease"
  need .device/carry2/teacher.gguf.part2 "carry .device/carry2"
  examples .device/carry2
  teacher 2
  ;;
start)  # the teacher assembled and checked (three pieces: with carry3's; two and no 'data' call: from a carried
        # carry2), the examples in place, then the whole job in the background
  lease_job_running "$RES" && exit 4  # never two jobs on one card
  need "$JOB/teacher/manifest.json" "run 'setup' first in this lease"
  if [ -z "$(gguf)" ] && [ "$(lease_gguf_parts "$JOB/teacher")" = 3 ]; then
    teacher 3
  elif [ -z "$(gguf)" ]; then  # two pieces and no 'data' call: carry2 came with this call (the older three-call shape)
    need .device/carry2/teacher.gguf.part2 "run 'data' first in this lease, or carry .device/carry2 here"
    examples .device/carry2
    teacher 2
  fi
  examples .device/carry3  # (none today: device_data.py keeps the examples in carry2)
  need "$JOB/data/mmlu_dev.jsonl.gz" "the examples come with .device/carry2: run 'data' first in this lease"
  : > "$RES/driver.log"
  lease_job_start "$RES" "$RES/driver.log" bash tools/device_eval_speed.sh driver || exit $?
  ;;
driver)  # (background) the benchmark, then nothing else: its JSON is rewritten after every row
  GGUF=$(gguf)
  step "eval_speed start (limit ${LIMIT:-500}, reference ${REF_LIMIT:-50}, lm-eval ${LM_LIMIT:-50,loglik=500} at batch ${LM_BS:-64}, cli ${CLI:-both}, sweep ${SWEEP:-none}, profile ${PROFILE:-no}, dtype ${DTYPE:-auto}, paths ${PATHS:-fast,reference,lm-eval})"
  # as a user runs it: the tokenizers' default (parallel) threads, not device_lib.sh's TOKENIZERS_PARALLELISM=false;
  # every kernel fla autotunes (a key the shipped configurations lack) logged for tools/fla_configs_from_log.py
  env -u TOKENIZERS_PARALLELISM TRITON_PRINT_AUTOTUNING=1 timeout "${JOB_TIMEOUT:-1080}" python3 benchmarks/eval_speed.py --model "$GGUF" --student "${STUDENT:-convert}" \
    --limit "${LIMIT:-500}" --reference-limit "${REF_LIMIT:-50}" --lm-eval-limit "${LM_LIMIT:-50,loglik=500}" \
    --lm-eval-batch-size "${LM_BS:-64}" --cli "${CLI:-both}" --cli-timeout 400 \
    --dtype "${DTYPE:-auto}" --paths "${PATHS:-fast,reference,lm-eval}" \
    ${SWEEP:+--overhead-sweep "$SWEEP"} ${SWEEP_TASKS:+--sweep-tasks "$SWEEP_TASKS"} ${PROFILE:+--profile "$RES/profiles"} \
    --out "$RES/eval_speed.json" > "$RES/eval_speed.log" 2>&1
  step "eval_speed rc=$?"
  touch "$RES/DONE"
  ;;
watch)  # follow the job until it finishes or $2 seconds pass; a summary under $OUT either way
  LIMIT_S=${2:-530}; T0=$(date +%s)
  while [ ! -e "$RES/DONE" ] && [ $(( $(date +%s) - T0 )) -lt "$LIMIT_S" ]; do sleep 5; done
  [ -e "$RES/DONE" ] && echo "job finished" || echo "job still running"
  cat "$RES/steps.txt" 2>/dev/null
  grep -v -i -E "warn|pretrained|Passed an already|HF model type|it/s\]" "$RES/eval_speed.log" 2>/dev/null | tail -n 40 | cut -c1-400
  mkdir -p "$OUT"
  { cat "$RES/nvidia-smi.txt" "$RES/commit.txt" "$RES/steps.txt" 2>/dev/null
    grep -v -i -E "warn|pretrained|Passed an already|HF model type|it/s\]" "$RES/eval_speed.log" 2>/dev/null | tail -n 60
  } > "$OUT/summary.txt"
  ;;
collect)  # the JSON, the summary, and one tarball of the results folder (logs included)
  mkdir -p "$OUT"
  cp "$RES/eval_speed.json" "$OUT/" 2>/dev/null
  tar czf /tmp/gendistill_eval_speed.tgz -C "$RES" . && mv /tmp/gendistill_eval_speed.tgz "$OUT/eval_speed_results.tgz"
  ls -la "$OUT"
  ;;
*) echo "usage: tools/device_eval_speed.sh setup|data|start|watch [SECONDS]|collect"; exit 2 ;;
esac
