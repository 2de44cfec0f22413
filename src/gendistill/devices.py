"""One dtype table and one device/dtype resolution for every command and the Python API.

Every ``--device`` and ``--dtype`` (and the recipe's ``teacher.dtype`` / ``run.device``) goes through
:func:`resolve_device` and :func:`resolve_dtype`, so ``auto`` means the same thing everywhere: the first CUDA device
when there is one, else the CPU; bfloat16 on CUDA, float32 on the CPU. A config field that names a device or a dtype
is checked, and stored in its canonical spelling, by the same rules (:func:`device_name`, :func:`dtype_choice`), so
``bf16`` and ``cuda:1`` mean the same in a recipe as on the command line.
"""

from __future__ import annotations

import re

import torch

from gendistill.errors import ConfigError, GendistillError

#: every dtype name a user may type -> the torch dtype (long names and the usual short ones)
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
#: the value of every ``--dtype`` / ``--device`` help text
DTYPE_HELP = "auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16 (or fp32, bf16, fp16)"
DEVICE_HELP = "auto (cuda if available, else cpu) | cpu | cuda | cuda:N"


def _named(what: str | None, problem: str) -> GendistillError:
    return GendistillError(f"{what}: {problem}" if what else problem)


def device_name(name: str | None, what: str | None = "--device") -> str:
    """The canonical spelling of a device name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (lower case, no padding,
    ``None`` -> ``auto``). Checks the spelling only, not that the device exists (a recipe is checked on any machine;
    :func:`resolve_device` checks existence). Raises :class:`GendistillError` naming ``what`` (no prefix if None)."""
    text = "auto" if name is None else str(name).strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text
    match = re.fullmatch(r"cuda:(\d+)", text)
    if match is None:
        raise _named(what, f"expected auto, cpu, cuda or cuda:N, got {name!r}")
    return f"cuda:{int(match.group(1))}"


def dtype_choice(name: str | None, what: str | None = "--dtype") -> str:
    """The canonical spelling of a dtype name: ``auto`` or the long name of a :data:`DTYPES` entry (``bf16`` ->
    ``bfloat16``; ``None`` -> ``auto``). Raises :class:`GendistillError` naming ``what`` (no prefix if None)."""
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return text
    if text not in DTYPES:
        raise _named(what, f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    return dtype_name(DTYPES[text])


def resolve_device(name: str | torch.device | None = "auto", what: str = "--device") -> torch.device:
    """``"auto"``/``None`` -> ``cuda`` if available else ``cpu``; otherwise the named device (:func:`device_name`, or
    ``mps``), checked to exist.

    Raises :class:`GendistillError` (one line naming ``what``) for a malformed name or CUDA asked for but absent."""
    if isinstance(name, torch.device):
        dev = name
    elif name is not None and str(name).strip().lower() == "mps":
        dev = torch.device("mps")
    else:
        text = device_name(name, what)
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(text)
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
    choice = dtype_choice(name, what)
    if choice == "auto":
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    return DTYPES[choice]


def dtype_name(dtype: torch.dtype) -> str:
    """The long name of a dtype (``torch.bfloat16`` -> ``"bfloat16"``)."""
    return str(dtype).removeprefix("torch.")


def available_cuda_bytes(device: torch.device) -> int:
    """Bytes new tensors on the CUDA ``device`` can use: the driver's free memory (``torch.cuda.mem_get_info``) plus
    the whole segments PyTorch's caching allocator holds reserved but unused (it hands those out again before asking
    the driver; after a large batch they can be most of the card) — reserved minus allocated, less the unused
    fragments of segments that still hold live tensors (``inactive_split_bytes``), which a large tensor cannot use.
    Under a per-process limit (:func:`limit_cuda_memory`: ``fraction × total`` bytes this process may reserve) no more
    than that limit less what this process's tensors and fragments already hold."""
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    cached = torch.cuda.memory_reserved(device) - allocated
    fragments = torch.cuda.memory_stats(device).get("inactive_split_bytes.all.current", 0)
    available = free + max(0, cached - fragments)
    fraction = torch.cuda.get_per_process_memory_fraction(cuda_index(device))
    if fraction < 1.0:
        available = min(available, int(fraction * total) - allocated - fragments)
    return int(max(0, available))


def limit_cuda_memory(fraction: float, device: torch.device) -> None:
    """Let this process reserve at most ``fraction`` of ``device``'s memory (PyTorch's caching allocator refuses
    more with an out-of-memory error in this process, not in another one sharing the card), and plan batches within
    it (:func:`available_cuda_bytes`). For processes that share a card, e.g. evaluations beside a distillation."""
    check_memory_fraction(fraction)
    torch.cuda.set_per_process_memory_fraction(fraction, cuda_index(device))


def cuda_index(device: torch.device) -> int:
    """The card number of a CUDA ``device``: its index, or the current card for a bare ``cuda`` (PyTorch's
    per-process memory fraction calls take only an index or an indexed device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def check_memory_fraction(fraction: float, what: str = "--gpu-memory-fraction") -> None:
    """A share of a card's memory, as :func:`limit_cuda_memory` takes it: in (0, 1]; else one line naming ``what``."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"{what}: {fraction} must be in (0, 1]")


__all__ = ["DTYPES", "DTYPE_HELP", "DEVICE_HELP", "device_name", "dtype_choice", "resolve_device", "resolve_dtype",
           "dtype_name", "available_cuda_bytes", "limit_cuda_memory", "check_memory_fraction"]
