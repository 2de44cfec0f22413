#!/usr/bin/env bash
# Download, here, the wheels a device-machine run needs into .whl/ (git-ignored; carry it: carry [".whl"]).
# The device image has torch 2.11 + CUDA 13, triton 3.6, numpy, pandas, pyarrow, tokenizers, safetensors, accelerate,
# typer, rich, pyyaml, einops, pytest; it lacks what is listed here (tools/device_env.sh installs .whl/ there).
#   bash tools/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl \
  transformers==5.24.0 fla-core==0.6.0 flash-linear-attention==0.6.0 gguf==0.19.0 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  datasets==4.4.1 dill==0.4.0 multiprocess==0.70.18
du -sh .whl
