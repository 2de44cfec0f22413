"""One dtype table and one device/dtype resolution for every command and the Python API.

Every ``--device`` and ``--dtype`` (and the recipe's ``teacher.dtype`` / ``run.device``) goes through
:func:`resolve_device` and :func:`resolve_dtype`, so ``auto`` means the same thing everywhere: the first CUDA device
when there is one, else the CPU; bfloat16 on CUDA, float32 on the CPU.
"""

from __future__ import annotations

import torch

from gendistill.errors import GendistillError

#: every dtype name a user may type -> the torch dtype (long names and the usual short ones)
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
#: the value of every ``--dtype`` / ``--device`` help text
DTYPE_HELP = "auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16 (or fp32, bf16, fp16)"
DEVICE_HELP = "auto (cuda if available, else cpu) | cpu | cuda | cuda:N"


def resolve_device(name: str | torch.device | None = "auto", what: str = "--device") -> torch.device:
    """``"auto"``/``None`` -> ``cuda`` if available else ``cpu``; otherwise the named device, checked to exist.

    Raises :class:`GendistillError` (one line naming ``what``) for a malformed name or CUDA asked for but absent."""
    if isinstance(name, torch.device):
        dev = name
    elif name is None or str(name).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        text = str(name).strip().lower()
        if text not in ("cpu", "cuda", "mps") and not text.startswith("cuda:"):
            raise GendistillError(f"{what}: expected auto, cpu, cuda or cuda:N, got {name!r}")
        try:
            dev = torch.device(text)
        except (RuntimeError, TypeError):
            raise GendistillError(f"{what}: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GendistillError(f"{what} {name}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GendistillError(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def resolve_dtype(name: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto",
                  what: str = "--dtype") -> torch.dtype:
    """``"auto"``/``None`` -> bfloat16 on CUDA, float32 elsewhere; a name from :data:`DTYPES`; a floating torch dtype
    as is. Raises :class:`GendistillError` naming ``what`` for anything else."""
    if isinstance(name, torch.dtype):
        if not name.is_floating_point:
            raise GendistillError(f"{what}: expected a floating dtype, got {name}")
        return name
    if name is None or str(name).strip().lower() == "auto":
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    try:
        return DTYPES[str(name).strip().lower()]
    except KeyError:
        raise GendistillError(f"{what}: unknown dtype {name!r}; use auto, {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The long name of a dtype (``torch.bfloat16`` -> ``"bfloat16"``)."""
    return str(dtype).removeprefix("torch.")


__all__ = ["DTYPES", "DTYPE_HELP", "DEVICE_HELP", "resolve_device", "resolve_dtype", "dtype_name"]
