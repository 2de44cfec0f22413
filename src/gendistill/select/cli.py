"""``gendistill select-layers``: choose which layers keep softmax attention."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from gendistill.cli_utils import console
from gendistill.devices import DEVICE_HELP
from gendistill.distill.config import format_validation_error
from gendistill.errors import ConfigError
from gendistill.ownership import claim_report_folder
from gendistill.runlock import acquire
from gendistill.select.cache import device_minutes
from gendistill.select.compare import REPORT_FILES, compare_selections, cost_text, write_comparison
from gendistill.select.config import SelectConfig
from gendistill.select.methods import plan
from gendistill.select.runner import check_against_teacher, select_layers
from gendistill.teachers import load_teacher_config


def register(app: typer.Typer) -> None:
    app.command("select-layers")(select_layers_command)
    app.command("select-compare")(select_compare_command)


def select_layers_command(
    teacher: str = typer.Option("smollm2-135m-instruct", "--teacher", "-t",
                                help="Teacher: a short name (smollm2-135m-instruct), a .gguf file, a local HF folder or a hub id."),
    budget: int = typer.Option(..., "--budget", "-k", help="How many layers keep softmax attention."),
    method: str = typer.Option(..., "--method",
                               help="uniform | kl-guided | greedy-learned | beam-add (the select documentation explains each and "
                                    "its cost)."),
    data: list[str] = typer.Option([], "--data", "-d",
                                   help="Training/held-out text: a .jsonl(.gz)/.json/.parquet/.txt file or folder "
                                        "(repeat for a mixture). Not needed by 'uniform'."),
    data_format: str = typer.Option("text", help="Format of --data: text | chat | prompt_response (as in recipes)."),
    text_field: str = typer.Option("text", help="Field holding the text of a record."),
    heldout_documents: int = typer.Option(64, help="First N documents of each source: never trained on, scored on."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: settings, score cache, layers.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue a stopped run in --out, reusing every cached score."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete a previous select-layers run in --out first."),
    aligned_from: Path | None = typer.Option(
        None, "--aligned-from", help="Reuse the aligned all-KDA student of another select-layers run (a method "
        "run before on the same teacher, data and alignment settings) instead of aligning one again."),
    seq_len: int = typer.Option(512, help="Tokens per training / held-out sequence."),
    batch_size: int = typer.Option(8, help="Sequences per optimizer step."),
    micro_batch_size: int = typer.Option(4, help="Sequences per forward pass."),
    eval_sequences: int = typer.Option(16, help="Held-out sequences of the KL score."),
    align_steps: int = typer.Option(100, help="Steps of stage 1 and of stage 2 aligning the all-KDA student."),
    align_lr: float = typer.Option(1e-3, help="Stage 1 learning rate (stage 2: a third)."),
    candidate_steps: int = typer.Option(20, help="Brief stage-3a steps per candidate set (0: score without training)."),
    candidate_lr: float = typer.Option(1e-4, help="Learning rate of the brief distillation."),
    beam_width: int = typer.Option(2, help="beam-add: partial sets kept at each size."),
    mix_steps: int = typer.Option(200, help="greedy-learned: steps training the per-layer attention/KDA mix."),
    mix_lr: float = typer.Option(1e-4, help="greedy-learned: learning rate of the KDA mixers."),
    mix_gate_lr: float = typer.Option(1e-2, help="greedy-learned: effective learning rate of the mix gates."),
    sparsity: float = typer.Option(0.05, help="greedy-learned: weight of the sparsity pressure mean_i alpha_i."),
    recall_kind: str = typer.Option("mqar", help="Recall task: mqar (associative recall) | needle (in held-out text)."),
    recall_prompts: int = typer.Option(32, help="Recall sequences."),
    recall_pairs: int = typer.Option(32, help="mqar: key/value pairs per sequence."),
    recall_queries: int = typer.Option(8, help="Keys asked per recall sequence."),
    recall_context: int = typer.Option(512, help="needle: tokens of held-out text per sequence."),
    recall_weight: float = typer.Option(1.0, help="beam-add: score = held-out KL + weight x recall KL."),
    seed: int = typer.Option(0, help="Seed of the KDA initialisation, the data order and the recall task."),
    device: str = typer.Option("auto", help=f"{DEVICE_HELP}."),
    precision: str = typer.Option("auto", help="auto (bf16 autocast on CUDA) | bf16 | fp32."),
    progress: str = typer.Option("auto", help="auto (bar on a terminal) | bar | lines | none."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (candidate sets, steps, tokens) and stop; "
                                                          "reads only the teacher's config."),
) -> None:
    """Choose which layers keep softmax attention and write OUT/layers.json (a ranked list and the chosen set), which
    `gendistill convert --attention-layers OUT/layers.json` and a recipe's student.attention_layers accept.
    Scores are cached in OUT/scores.json: rerun with --resume after a stop. The cost (CPU/GPU-minutes, tokens) of
    the method is reported at the end and in layers.json."""
    try:
        src = [{"path": p, "format": data_format, "text_field": text_field} for p in data]
        cfg = SelectConfig.model_validate(dict(
            teacher=teacher, method=method, budget=budget, output_dir=str(out),
            data={"sources": src, "heldout_documents": heldout_documents, "seed": seed} if src else None,
            seq_len=seq_len, batch_size=batch_size, micro_batch_size=micro_batch_size, eval_sequences=eval_sequences,
            align_steps=align_steps, align_lr=align_lr, candidate_steps=candidate_steps, candidate_lr=candidate_lr,
            beam_width=beam_width, mix_steps=mix_steps, mix_lr=mix_lr, mix_gate_lr=mix_gate_lr, sparsity=sparsity,
            recall=dict(kind=recall_kind, prompts=recall_prompts, pairs=recall_pairs, queries=recall_queries,
                        context=recall_context, weight=recall_weight),
            seed=seed, device=device, precision=precision,
            aligned_from=str(aligned_from) if aligned_from is not None else None,
        ))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "select-layers").replace("output_dir", "out")) from None
    if progress not in ("auto", "bar", "lines", "none"):
        raise ConfigError(f"--progress {progress!r}: use auto, bar, lines or none")
    if dry_run:
        L = check_against_teacher(cfg, load_teacher_config(teacher))
        console.print_json(json.dumps(plan(cfg, L)))
        return
    res = select_layers(cfg, resume=resume, overwrite=overwrite, progress=progress)

    table = Table(title=f"{method}: {budget} of {res['num_layers']} layers keep attention")
    table.add_column("rank", justify="right")
    table.add_column("layer", justify="right")
    table.add_column("chosen")
    for r, layer in enumerate(res["ranked"], 1):
        table.add_row(str(r), str(layer), "yes" if layer in res["attention_layers"] else "")
    console.print(table)
    c = res["cost"]
    minutes, unit = device_minutes(c)
    console.print(f"attention layers: {','.join(map(str, res['attention_layers'])) or 'none'}")
    console.print(f"cost: {minutes} {unit}-minutes, {c['train_tokens']:,} tokens trained, {c['eval_tokens']:,} "
                  f"tokens scored, {c['candidates_scored']} candidate sets ({c['cached_records_reused']} from the cache)")
    console.print(f"wrote {out / 'layers.json'}; next: gendistill convert --attention-layers {out / 'layers.json'} "
                  f"--teacher {teacher} --out STUDENT", markup=False)


def select_compare_command(
    results: list[Path] = typer.Argument(..., help="Two or more select-layers results: layers.json files or the "
                                                   "run folders holding them (one teacher)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for select_compare.json, .md and .png "
                                                              "(left out: the table only)."),
) -> None:
    """Compare the layers several select-layers runs chose: each method's set and cost, the pairwise overlap
    (shared layers and Jaccard index), the layers every method chose, and a plot of the chosen layers per method."""
    cmp = compare_selections(list(results))
    table = Table(title=f"{cmp['teacher']}: attention layers chosen of {cmp['num_layers']}")
    for col in ("method", "budget", "attention layers", "cost"):
        table.add_column(col, justify="right" if col == "budget" else "left")
    for s in cmp["selections"]:
        table.add_row(s["label"], str(s["budget"]), ",".join(map(str, s["attention_layers"])), cost_text(s["cost"]))
    console.print(table)
    ov = cmp["overlap"]
    for i, a in enumerate(ov["labels"]):
        for j in range(i + 1, len(ov["labels"])):
            console.print(f"{a} & {ov['labels'][j]}: {ov['shared'][i][j]} shared (Jaccard {ov['jaccard'][i][j]:.2f})")
    console.print(f"chosen by every method: {','.join(map(str, cmp['chosen_by_all'])) or 'none'}")
    if out is not None:
        with acquire(out, "--out"):
            claim_report_folder(out, REPORT_FILES, "--out")
            paths = write_comparison(cmp, out)
        for key, path in paths.items():
            console.print(f"{key}: {path}", markup=False)
