# shellcheck shell=bash
# What every lease script (tools/device_*.sh) does the same way; source it from the repository root:
#   . tools/device_lib.sh
# It only defines functions and exports the environment of a device run; each function prints one clear line and
# returns non-zero when a precondition fails, and the script decides its exit status:
#   lease_gpu RES          the GPU named (nvidia-smi into RES/nvidia-smi.txt), or "error: no GPU"
#   lease_wheels [GLOB..]  .whl/ carried (fla, transformers and each GLOB present), installed into /tmp/site
#   lease_need PATH HINT   PATH exists, or "error: PATH missing (HINT)"
#   lease_commit RES       the commit the caller passed (COMMIT=...) into RES/commit.txt: the device copy's git metadata
#                          is stale (on 2026-12-04 it named an older commit than the tree that ran)
#   lease_versions [MOD..] import torch, triton, transformers, fla and each module MOD (the checkout's own modules the
#                          run needs, so an import error shows at set-up, not minutes into the job); print the versions
#   lease_step_check       the trainer's fast step against its reference step (tests/gpu): one line, a verdict or
#                          how far it got before STEP_CHECK_TIMEOUT
#   lease_step_check_background FILE  the same in the background (its line into FILE, its log beside it as
#                          FILE with .log for .txt: the kernels it autotuned, for tools/fla_configs_from_log.py);
#                          STEP_CHECK=skip writes "skipped" instead (a second machine of one lease, the same commit)
#   lease_shipped_configs DIR  DIR (made if missing) gets the shipped H200 fla configurations (what gendistill reads on
#                          an H100 or H200 by itself) beside what it holds, so keys dumped or recovered into it add to
#                          the shipped ones: under FLA_CACHE_MODE=strict a folder of new keys alone autotunes the rest
#   lease_teacher_piece2 DIR  the teacher GGUF's second piece (.device/carry2) beside the first in DIR (with its
#                          manifest): the teacher assembled and checked in DIR, or, when the manifest lists three
#                          pieces (tools/device_data.py), piece 2 kept in DIR for lease_teacher_piece3; one line says which
#   lease_teacher_piece3 DIR  three pieces: the teacher assembled in DIR from the kept piece 2 and .device/carry3's
#                          piece 3, checked against the manifest
#   lease_gguf_parts DIR   how many pieces the GGUF travels in (DIR/manifest.json's "parts"; 2 when it has none,
#                          0 without a manifest)
#   lease_job_running DIR  "error: a job started in DIR still runs ..." and status 0 while the one job started there
#                          (lease_job_start) runs; status 1 otherwise
#   lease_job_start DIR LOG CMD...  CMD in the background in a process session of its own (it outlives the call), its
#                          output appended to LOG; refused (status 4, lease_job_running's line) while an earlier job of
#                          DIR runs; DIR/DONE of an earlier job removed first; the pid in DIR.pid (beside DIR, so that
#                          an rm -rf of DIR does not forget the job); prints "started (pid N): CMD"
#   lease_gpu_test DIR SECONDS [pytest args]  GPU tests alone on the card, bounded, through tools/gpu_pytest.py (after a
#                          failure or crash the tests not yet run go on in a new process); verdicts and log (every
#                          kernel fla autotunes) in DIR/gpu_test[_N].json / .log; prints every verdict but "passed"
#                          and the summary line; returns gpu_pytest's status
# The device image has torch 2.11 + CUDA 13 + triton 3.6; tools/device_wheels.sh fills .whl/ here with what it lacks.
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
       NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 TRITON_CACHE_AUTOTUNING=1
[ -x "$PWD/.whl/bwrap/bwrap" ] && export PATH=$PWD/.whl/bwrap:$PATH  # HumanEval's sandbox (tools/device_wheels.sh)

lease_gpu() {
  mkdir -p "$1"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$1/nvidia-smi.txt" 2>&1 \
    || { echo "error: no GPU (nvidia-smi failed: $(head -c 200 "$1/nvidia-smi.txt"))"; return 3; }
  cat "$1/nvidia-smi.txt"
  # fla's TileLang backend (the way Gated DeltaNet and Mamba2 train on a Hopper card under Triton 3.6: docs/mixers.md)
  # needs nvcc: say whether this machine has one
  echo "nvcc: $(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -n 1 || true)" | sed 's/: $/: none/'
}

lease_wheels() {
  local glob
  for glob in fla_core-*.whl transformers-*.whl "$@"; do
    compgen -G ".whl/$glob" > /dev/null \
      || { echo "error: .whl/$glob not carried (bash tools/device_wheels.sh here, then carry \".whl\")"; return 3; }
  done
  timeout 180 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "error: installing the carried wheels failed"; return 4; }
}

lease_job_running() {
  local pid
  pid=$(cat "${1%/}.pid" 2>/dev/null) || return 1
  # running, and still the session leader it was started as (not a later process that got the same pid)
  [ -n "$pid" ] && [ "$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ] || return 1
  echo "error: a job started in $1 still runs (pid $pid): watch it to its end, or stop it with kill -- -$pid"
}

lease_job_start() {
  # One job per card and per folder. 2026-12-07: a second 'start' of tools/device_train_speed.sh found the first
  # driver's DONE, reported "driver finished" at once and left a second driver running; the next call's driver then
  # shared the card with it (the benchmark at 88K tokens/s instead of 145K, two GPU suites at once), and every figure of
  # that call was void.
  local dir=${1%/} log=$2
  shift 2
  lease_job_running "$dir" && return 4
  mkdir -p "$dir" && rm -f "$dir/DONE"
  setsid nohup "$@" >> "$log" 2>&1 < /dev/null &
  echo $! > "$dir.pid"
  echo "started (pid $!): $*"
}

lease_need() {
  [ -e "$1" ] || { echo "error: $1 missing ($2)"; return 3; }
}

lease_commit() {
  mkdir -p "$1"
  echo "${COMMIT:-unknown: pass COMMIT=\$(git rev-parse --short HEAD) from the calling machine}" > "$1/commit.txt"
}

lease_shipped_configs() {
  mkdir -p "$1" && cp -n src/gendistill/ops/fla_config_files/NVIDIA_H200/*.json "$1"/
}

lease_step_check() {
  # the trainer's fast paths against its reference step on this GPU (tests/gpu/test_distill_gpu.py: stages 3a, 2 and 1,
  # and the eager-attention step) before a lease trains on them; one line whatever happens: pytest's summary,
  # or, when STEP_CHECK_TIMEOUT (240 s) cuts it, how many cases had passed or failed by then. On a fresh H100 240 s
  # cut it before its first verdict (2026-12-05, docs/results.md section 12; likely fla autotuning the tests' small
  # shapes, which the strict configurations do not cover); the log (Triton's autotuning included) stays in
  # STEP_CHECK_LOG.
  local log=${STEP_CHECK_LOG:-/tmp/gendistill_step_check.log} limit=${STEP_CHECK_TIMEOUT:-240} rc
  TRITON_PRINT_AUTOTUNING=1 timeout "$limit" python3 -m pytest -v -p no:cacheprovider tests/gpu/test_distill_gpu.py \
    -k equals_reference_step > "$log" 2>&1
  rc=$?
  if [ "$rc" = 124 ]; then
    echo "trainer step check (tests/gpu, reference step): TIMED OUT after $limit s, no verdict:" \
      "$(grep -c ' PASSED' "$log") passed, $(grep -c ' FAILED' "$log") failed before the cut;" \
      "$(grep -c '^Triton autotuning for function' "$log") kernels autotuned (log: $log)"
  else
    echo "trainer step check (tests/gpu, reference step): $(tail -n 1 "$log")"
  fi
  echo "trainer step check ended at $(date -u +%H:%M:%S) UTC"  # a job beside it shared the GPU until then
}

lease_step_check_background() {
  # The step check beside the job instead of before it: on a fresh H100 it ran past 240 s without a verdict while the
  # lease waited (2026-12-05). Its small test models cost the job little GPU time, but until it ends (its last line
  # says when) the job's first stage runs share the card: their tokens/s, and any kernel either process autotunes
  # then, are measured under that load. The lease reads the verdict in FILE (a failure: the job's student was
  # trained on a fast path that differs from the reference; stop and fix).
  if [ "${STEP_CHECK:-}" = skip ]; then  # a second machine of one lease, same commit: it passed on the first
    echo "trainer step check (tests/gpu, reference step): skipped (STEP_CHECK=skip)" | tee "$1"
    return 0
  fi
  echo "trainer step check (tests/gpu, reference step): running in the background, its line in $1"
  STEP_CHECK_TIMEOUT=${STEP_CHECK_TIMEOUT:-600} STEP_CHECK_LOG="${1%.txt}.log" \
    setsid nohup bash -c '. tools/device_lib.sh && lease_step_check' > "$1" 2>&1 < /dev/null &
}

lease_versions() {
  timeout 180 python3 - "$@" <<'PY'
import importlib
import sys

import fla, torch, transformers, triton
for name in sys.argv[1:]:
    importlib.import_module(name)
print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
      f"transformers {transformers.__version__} | fla {fla.__version__}", flush=True)
PY
}

lease_gguf_parts() {
  [ -f "$1/manifest.json" ] || { echo 0; return 0; }
  python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1])).get("parts", [0, 0])))' "$1/manifest.json"
}

lease_teacher_piece2() {
  lease_need "$1/manifest.json" "run 'setup' first in this lease" || return 3
  lease_need .device/carry2/teacher.gguf.part2 "carry .device/carry2" || return 3
  if [ "$(lease_gguf_parts "$1")" = 3 ]; then
    cp -f .device/carry2/teacher.gguf.part2 "$1/" || return 5
    echo "GGUF piece 2 kept in $1: 'start' assembles the teacher with carry3's third piece"
  else
    timeout 120 python3 tools/device_teacher.py "$1" .device/carry2/teacher.gguf.part2 || return 5
  fi
}

lease_teacher_piece3() {
  lease_need "$1/teacher.gguf.part2" "run 'data' first in this lease (carry .device/carry2)" || return 3
  lease_need .device/carry3/teacher.gguf.part3 "carry .device/carry3" || return 3
  timeout 120 python3 tools/device_teacher.py "$1" "$1/teacher.gguf.part2" .device/carry3/teacher.gguf.part3 \
    || return 5
  rm -f "$1/teacher.gguf.part2"
}

lease_gpu_test() {
  local dir=$1 limit=$2 rc
  shift 2
  mkdir -p "$dir"
  TRITON_PRINT_AUTOTUNING=1 timeout "$((limit + 30))" python3 tools/gpu_pytest.py --limit "$limit" --out "$dir" "$@" \
    > "$dir/gpu_test_verdicts.txt" 2>&1
  rc=$?
  grep -v '^passed ' "$dir/gpu_test_verdicts.txt" | cut -c1-220
  return "$rc"
}
