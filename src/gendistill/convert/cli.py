"""``gendistill convert`` and ``gendistill chat``."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer
from rich.panel import Panel
from rich.table import Table

from gendistill.cli_utils import console
from gendistill.devices import DEVICE_HELP, DTYPE_HELP
from gendistill.errors import GendistillError


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)
    app.command("chat")(chat_command)


def convert_command(
    teacher: str = typer.Option("smollm2-135m-instruct", "--teacher", "-t",
                                help="Teacher: a short name (smollm2-135m-instruct), a .gguf file, a local HF folder or a hub id."),
    attention_layers: str = typer.Option(..., "--attention-layers", "-a",
                                         help="Layers that keep softmax attention: '0,2,6,11', 'every:4' (3,7,11,...), "
                                              "'ratio:0.25', 'none', 'all', a JSON file from layer selection, or a "
                                              "student's layer spec 'attention:0,2;kda:1,3'."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the student to (safetensors + config + tokenizer "
                                                      "+ README.md model card)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it holds a student gendistill wrote "
                                                              "(never a folder of other files, the working folder or a "
                                                              "git repository)."),
    mixer: str = typer.Option("kda", help="Linear mixer of the replaced layers: 'kda' (paper), 'gated_deltanet', 'gla' "
                                           "or 'mamba2'; all start from the teacher's q/k/v/o."),
    kv_mode: str = typer.Option("repeat", help="KDA k/v heads: 'repeat' the teacher's GQA heads at run time (paper) or "
                                                "'expand' them into per-head weights (fla's MHA layout)."),
    gate_activation: str = typer.Option("silu", help="Output-gate activation: 'silu' (identity at init) or 'sigmoid'."),
    conv_activation: str = typer.Option("none", help="Short-conv activation: 'none' (paper) or 'silu' (fla default)."),
    dtype: str = typer.Option("auto", help=f"dtype to load, convert and save in: {DTYPE_HELP}."),
    device: str = typer.Option("auto", help=f"Device for the conversion: {DEVICE_HELP}."),
    seed: int = typer.Option(0, help="Seed of the random KDA initialisation (A_log, dt_bias, gate projections)."),
) -> None:
    """Convert a teacher into a hybrid student: chosen layers keep attention, the rest become KDA mixers initialised
    from the teacher's projections. Prints a summary table; writes SUMMARY.json and a model card beside the model."""
    from gendistill.api import convert
    from gendistill.convert.summary import human_bytes

    start = time.perf_counter()
    res = convert(teacher, attention_layers, out, mixer=mixer, kv_mode=kv_mode, gate_activation=gate_activation,
                  conv_activation=conv_activation, dtype=dtype, device=device, seed=seed, overwrite=overwrite)
    summary = res.summary

    table = Table(title=f"{teacher} -> hybrid student ({summary.family})", show_lines=False)
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    n = summary.num_layers
    table.add_row("layers (attention / KDA)", f"{n} / 0", f"{len(summary.attention_layers)} / {len(summary.kda_layers)}")
    table.add_row("attention layers", "all", ",".join(map(str, summary.attention_layers)) or "none")
    table.add_row("parameters", f"{summary.teacher_params:,}", f"{summary.student_params:,} "
                  f"({100 * (summary.student_params / summary.teacher_params - 1):+.1f}%)")
    table.add_row("KV cache per token (bf16)", human_bytes(summary.teacher_cache_bytes_per_token),
                  human_bytes(summary.student_cache_bytes_per_token))
    table.add_row("fixed KDA state per sequence", "-", human_bytes(summary.student_fixed_state_bytes))
    ratio = summary.student_cache_bytes_128k / summary.teacher_cache_bytes_128k
    table.add_row("cache at 128K tokens", human_bytes(summary.teacher_cache_bytes_128k),
                  f"{human_bytes(summary.student_cache_bytes_128k)} ({100 * ratio:.1f}%)")
    console.print(table)
    console.print(f"Saved student to [bold]{out}[/] in {time.perf_counter() - start:.1f} s. Load it with "
                  "`import gendistill; AutoModelForCausalLM.from_pretrained(...)`.")


def chat_command(
    prompt: str = typer.Option(..., "--prompt", "-p", help="User message."),
    teacher: str = typer.Option(None, "--teacher", "-t", help="Teacher: short name, .gguf, folder or hub id."),
    student: list[str] = typer.Option([], "--student", "-s", help="Student folder(s) or hub id(s); repeat the option "
                                                                   "for several."),
    system: str = typer.Option(None, help="Optional system message."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate."),
    sample: bool = typer.Option(False, help="Sample (temperature 0.7, top-p 0.8, top-k 20) instead of greedy."),
    seed: int = typer.Option(0, help="Sampling seed."),
    dtype: str = typer.Option("auto", help=f"Model dtype: {DTYPE_HELP}."),
    device: str = typer.Option("auto", help=f"Device: {DEVICE_HELP}."),
) -> None:
    """Answer one chat-templated prompt with the teacher and each student, side by side."""
    from gendistill.devices import resolve_device, resolve_dtype
    from gendistill.models.loading import load_model, model_label

    specs = ([teacher] if teacher else []) + list(student)
    if not specs:
        raise GendistillError("give at least one --teacher or --student")
    from gendistill.limits import MAX_NEW_TOKENS, check_range

    check_range(max_new_tokens, 1, MAX_NEW_TOKENS, "--max-new-tokens")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)  # both checked before any model is loaded
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    for spec in specs:
        model, tokenizer = load_model(spec, dtype=dt, device=dev)
        if not getattr(tokenizer, "chat_template", None):
            raise GendistillError(f"the tokenizer of {spec} has no chat template")
        try:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True).to(dev)
        except Exception as e:  # noqa: BLE001 - the template is the model's code (raise_exception, a bad role, ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GendistillError(f"the chat template of {spec} failed on this prompt: {first[:300]}") from None
        torch.manual_seed(seed)
        kwargs = dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20) if sample else dict(do_sample=False)
        start = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
                                    or tokenizer.eos_token_id, **kwargs)
        seconds = time.perf_counter() - start
        new = output[0, ids["input_ids"].shape[1]:]
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        kind = "student" if spec in student else "teacher"
        console.print(Panel(text or "[dim](empty)[/]", title=f"{kind}: {model_label(spec)}",
                            subtitle=f"{len(new)} tokens, {len(new) / seconds:.1f} tok/s on {dev}"))
