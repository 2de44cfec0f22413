# Source this at the start of a device-tool command (run from the repository root):
#   . tools/device_env.sh
# Installs the wheels carried in .whl/ (tools/device_wheels.sh downloads them: fla, transformers 5.24, gguf, pydantic,
# datasets; the image has the rest) into /tmp/site and
# puts them and src/ first on PYTHONPATH. The device image has torch 2.11 + CUDA 13 + triton 3.6 already.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 TRITON_CACHE_AUTOTUNING=1
python3 - <<'PY'
import torch, transformers, triton, fla
print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
      f"transformers {transformers.__version__} | fla {fla.__version__}", flush=True)
PY
