"""Where the time goes: torch.profiler over one prefill and a few decode steps per model, with the time split by
block part (attention mixer, KDA mixer, MLP, lm_head) through ``record_function`` labels put on by module hooks.

Appends the top kernels/ops of each profile to one text file (``profiles.txt`` in the output folder: the device tool
brings back at most 8 files) and returns a summary dict: per label, the summed device time (CUDA) or CPU time (CPU)
in ms."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from gendistill.bench import engine

LABEL_PREFIX = "bench::"


@contextmanager
def labelled(model: Any):
    """Wrap every attention mixer, KDA mixer, MLP and the lm_head in a ``record_function`` range."""
    handles, stack = [], []

    def pre(label):
        def hook(module, args, kwargs=None):
            rf = record_function(LABEL_PREFIX + label)
            rf.__enter__()
            stack.append(rf)

        return hook

    def post(module, args, output):
        if stack:
            stack.pop().__exit__(None, None, None)

    layers = getattr(getattr(model, "model", model), "layers", [])
    targets = []
    for layer in layers:
        for attr, label in (("self_attn", "attention"), ("linear_attn", "kda"), ("mlp", "mlp")):
            mod = getattr(layer, attr, None)
            if mod is not None:
                targets.append((mod, label))
    head = getattr(model, "lm_head", None)
    if head is not None:
        targets.append((head, "lm_head"))
    for mod, label in targets:
        handles.append(mod.register_forward_pre_hook(pre(label)))
        handles.append(mod.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def label_times(prof, use_cuda: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    for evt in prof.key_averages():
        if evt.key.startswith(LABEL_PREFIX):
            t = getattr(evt, "device_time_total", 0.0) if use_cuda else evt.cpu_time_total
            if use_cuda and not t:
                t = getattr(evt, "cuda_time_total", 0.0)
            out[evt.key[len(LABEL_PREFIX):]] = round(t / 1e3, 4)  # us -> ms
    return out


def op_table(prof, use_cuda: bool) -> str:
    key = "device_time_total" if use_cuda else "cpu_time_total"
    try:
        return prof.key_averages().table(sort_by=key, row_limit=40)
    except Exception:  # noqa: BLE001 - older torch: cuda_time_total
        return prof.key_averages().table(sort_by="cuda_time_total" if use_cuda else "cpu_time_total", row_limit=40)


def append_table(path: Path, title: str, table: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"\n{'=' * 40} {title} {'=' * 40}\n{table}\n")


@torch.inference_mode()
def profile_model(model: Any, role: str, L: int, device: torch.device, table_path: Path, decode_steps: int = 8) -> dict:
    use_cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if use_cuda else [])
    ids = engine.random_prompt(model.config.vocab_size, L, 1, device, seed=123)
    engine.prefill(model, ids)  # warm-up: autotuning out of the profile
    if use_cuda:
        torch.cuda.synchronize(device)
    res: dict[str, Any] = {}
    with labelled(model):
        with profile(activities=acts) as prof:
            cache, first = engine.prefill(model, ids)
            if use_cuda:
                torch.cuda.synchronize(device)
        res["prefill_ms_by_part"] = label_times(prof, use_cuda)
        append_table(table_path, f"{role} prefill, context {L}", op_table(prof, use_cuda))

        max_len = L + 2 * decode_steps + 8
        state = engine.make_state(engine.to_static_cache(cache, model.config, max_len), first, L, max_len)
        del cache
        step = engine.make_step(model, state)
        for _ in range(decode_steps):  # warm-up
            step()
        with profile(activities=acts) as prof:
            for _ in range(decode_steps):
                step()
            if use_cuda:
                torch.cuda.synchronize(device)
        res["decode_ms_by_part"] = {k: round(v / decode_steps, 4) for k, v in label_times(prof, use_cuda).items()}
        append_table(table_path, f"{role} decode ({decode_steps} steps), context {L}", op_table(prof, use_cuda))
    res["clock"] = "device (CUDA kernel time)" if use_cuda else "cpu"
    res["tables"] = str(table_path)
    return res
