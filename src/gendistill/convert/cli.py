"""``gendistill convert``: a teacher into a hybrid student, with a summary table."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from gendistill.cli_utils import console
from gendistill.convert.api import convert
from gendistill.convert.summary import human_bytes
from gendistill.devices import DEVICE_HELP, DTYPE_HELP
from gendistill.models.card import gate_description


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)


def convert_command(
    teacher: str = typer.Option("smollm2-135m-instruct", "--teacher", "-t",
                                help="Teacher: a short name (smollm2-135m-instruct), a .gguf file, a local HF folder or a hub id."),
    attention_layers: str = typer.Option(..., "--attention-layers", "-a",
                                         help="Layers that keep softmax attention: '0,2,6,11', 'every:4' (3,7,11,...), "
                                              "'ratio:0.25', 'none', 'all', a JSON file from layer selection (a .json "
                                              "name, a path with a folder, ./layers, or a select-layers run folder), "
                                              "or a student's layer spec 'attention:0,2;kda:1,3'."),
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
    kda_gate_lower_bound: float = typer.Option(None, help="KDA decay gate: leave out for the paper's gate "
                                                "-exp(A_log)*softplus(f+dt_bias); a number in [-5, 0) for fla's bounded "
                                                "gate lb*sigmoid(exp(A_log)*(f+dt_bias)), computed by fla's faster "
                                                "safe_gate kernel (a different function: distill with it)."),
    dtype: str = typer.Option("auto", help=f"dtype to load, convert and save in: {DTYPE_HELP}."),
    device: str = typer.Option("auto", help=f"Device for the conversion: {DEVICE_HELP}."),
    seed: int = typer.Option(0, help="Seed of the random KDA initialisation (A_log, dt_bias, gate projections)."),
) -> None:
    """Convert a teacher into a hybrid student: chosen layers keep attention, the rest become KDA mixers initialised
    from the teacher's projections. Prints a summary table; writes SUMMARY.json and a model card beside the model."""
    start = time.perf_counter()
    res = convert(teacher, attention_layers, out, mixer=mixer, kv_mode=kv_mode, gate_activation=gate_activation,
                  conv_activation=conv_activation, kda_gate_lower_bound=kda_gate_lower_bound, dtype=dtype,
                  device=device, seed=seed, overwrite=overwrite)
    summary = res.summary

    table = Table(title=f"{teacher} -> hybrid student ({summary.family})", show_lines=False)
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    n = summary.num_layers
    table.add_row("layers (attention / KDA)", f"{n} / 0", f"{len(summary.attention_layers)} / {len(summary.kda_layers)}")
    table.add_row("attention layers", "all", ",".join(map(str, summary.attention_layers)) or "none")
    if res.student.config.linear_attention_type == "kda":
        table.add_row("KDA decay gate", "-", gate_description(summary.kda_gate_lower_bound))
    table.add_row("parameters", f"{summary.teacher_params:,}", f"{summary.student_params:,} "
                  f"({100 * (summary.student_params / summary.teacher_params - 1):+.1f}%)")
    table.add_row("KV cache per token (bf16)", human_bytes(summary.teacher_cache_bytes_per_token),
                  human_bytes(summary.student_cache_bytes_per_token))
    table.add_row("fixed KDA state per sequence", "-", human_bytes(summary.student_fixed_state_bytes))
    ratio = summary.student_cache_bytes_128k / summary.teacher_cache_bytes_128k
    table.add_row("cache at 128K tokens", human_bytes(summary.teacher_cache_bytes_128k),
                  f"{human_bytes(summary.student_cache_bytes_128k)} ({100 * ratio:.1f}%)")
    console.print(table)
    console.print(f"Saved student to [bold]{escape(str(out))}[/] in {time.perf_counter() - start:.1f} s. Load it with "
                  "`import gendistill; AutoModelForCausalLM.from_pretrained(...)`.")
