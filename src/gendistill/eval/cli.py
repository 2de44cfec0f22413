"""``gendistill eval``: score teacher and students on benchmarks by log-likelihood AND by generation (docs/eval.md)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import torch
import typer

from gendistill.devices import DEVICE_HELP, DTYPE_HELP
from gendistill.errors import DataError
from gendistill.limits import check_range
from gendistill.eval.api import evaluate
from gendistill.eval.fidelity import DEFAULT_CHAT_HELDOUT
from gendistill.eval.report import REPORT_FILES, merge_results, write_report
from gendistill.eval.ruler import parse_depths, parse_lengths
from gendistill.eval.runner import time_summary
from gendistill.ownership import check_report_folder, claim_report_folder
from gendistill.runlock import acquire


def eval_command(
    model: list[str] = typer.Option(None, "--model", "-m",
                                    help="Model: short name, .gguf, HF/student folder or hub id. Repeat; the first "
                                         "is the teacher."),
    tasks: str = typer.Option("arc_easy", help="Comma-separated: built-in names (arc_easy, arc_challenge, mmlu, "
                                               "hellaswag, piqa, winogrande, boolq, gsm8k, triviaqa; 'all' for "
                                               "these), long-context ruler_niah_single_1..4, ruler_niah_multikey_1..3, "
                                               "ruler_niah_multivalue, ruler_niah_multiquery, ruler_vt, ruler_cwe "
                                               "('ruler' for all), humaneval ('code'), .jsonl files, or .yaml task "
                                               "definitions."),
    protocol: str = typer.Option("loglik,generate", help="loglik, generate, or both (comma-separated)."),
    limit: int = typer.Option(None, help="Examples per task (deterministic subsample by --seed); for ruler_* tasks "
                                         "the samples per context length (default 4 per depth)."),
    seed: int = typer.Option(0, help="Seed of the subsample and of sampling."),
    smoke: bool = typer.Option(False, "--smoke", help=f"Quick plumbing check: at most 4 examples per task and 16 "
                                                      f"new tokens."),
    out: str = typer.Option("runs/eval", "--out", "-o", help="Output folder: results.json/.md/.png and "
                                                             "examples/*.jsonl."),
    batch_size: int = typer.Option(None, help="Generation rows per batch (left-padded, length-sorted); default: as "
                                              "many as half the free GPU memory holds (at most 512), 16 on CPU, 8 "
                                              "with --engine reference."),
    engine: str = typer.Option("auto", help="fast: generation on a static cache with per-row stopping and "
                                            "CUDA-graph decode (greedy only), log-likelihood scored only where it "
                                            "counts; reference: transformers' generate and full-logit scoring (the "
                                            "check, and sampling); auto: fast, but reference generation with "
                                            "--samples."),
    token_budget: int = typer.Option(None, help="Log-likelihood batch size in tokens; default: from free GPU "
                                                "memory (2048 on CPU)."),
    gpu_memory_fraction: float = typer.Option(None, help="At most this share (0-1] of the GPU's memory, batches "
                                                         "planned within it (e.g. 0.05 beside a distillation)."),
    loglik_chat_template: bool = typer.Option(False, "--loglik-chat-template/--no-loglik-chat-template",
                                              help="Wrap log-likelihood contexts in the chat template "
                                                   "(lm-eval --apply_chat_template)."),
    samples: int = typer.Option(0, help="0: greedy decoding. N>0: sampling with N seeds, accuracy averaged."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (with --samples)."),
    top_p: float = typer.Option(0.8, help="Sampling top-p (with --samples)."),
    top_k: int = typer.Option(20, help="Sampling top-k (with --samples)."),
    max_new_tokens: int = typer.Option(None, help="Override every task's max new tokens."),
    data_source: str = typer.Option("local", help="local (shared/data or GENDISTILL_DATA_DIR) or hf (hub datasets)."),
    dtype: str = typer.Option("auto", help=f"{DTYPE_HELP}."),
    device: str = typer.Option("auto", help=f"{DEVICE_HELP}."),
    fidelity_chat: int = typer.Option(0, help="Held-out chat conversations for teacher-forced top-1 agreement and "
                                              "KL: the first N of --fidelity-data (0: off; needs 2+ models)."),
    fidelity_data: str = typer.Option(None, help="JSONL with 'messages' for --fidelity-chat (default: sft_mix; "
                                                 f"the shipped recipes hold out its first {DEFAULT_CHAT_HELDOUT})."),
    fidelity_heldout: list[str] = typer.Option(None, help="Held-out rows a distillation wrote (RUN/heldout/"
                                               "stage3a.safetensors; repeatable): top-1, KL on the trainer's rows."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default; 1 avoids oversubscription)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
    context_lengths: str = typer.Option(None, "--context-lengths",
                                        help="ruler_* tasks: prompt lengths in tokens of the first model's tokenizer, "
                                             "answer budget included (e.g. 1k,2k,4k,8k; default 4096)."),
    depths: str = typer.Option(None, help="ruler_* tasks: needle depths in percent of the haystack "
                                          "(default 0,25,50,75,100)."),
    haystack: str = typer.Option(None, help="ruler NIAH tasks: 'noise', 'essay' (both generated) or a UTF-8 text "
                                            "file, instead of each task's own haystack."),
    rope_scaling: str = typer.Option(None, "--rope-scaling",
                                     help="Context extension at evaluation time, on every model's attention layers "
                                          "(KDA layers have no positions): yarn:F, linear:F or dynamic:F, e.g. "
                                          "yarn:4 (transformers' rope_parameters)."),
    update_card: bool = typer.Option(False, "--update-card", help="Write each evaluated student's results into its "
                                                                  "model card (README.md; folders gendistill wrote)."),
    unsafe_allow_unsandboxed_code: bool = typer.Option(
        False, "--unsafe-allow-unsandboxed-code",
        help="humaneval: execute model-written code even where the bubblewrap sandbox (bwrap) is missing or cannot "
             "create namespaces, with weaker layers such code can escape (it can reach host UNIX sockets such as "
             "docker.sock). Without it, such a run is refused."),
    no_cache: bool = typer.Option(False, "--no-cache",
                                  help="Score every model again: neither read nor write the result cache (each "
                                       "result kept under the model's weight hash, the task's examples and every "
                                       "setting that changes it)."),
    cache_dir: str = typer.Option(None, "--cache-dir", help="Folder of the result cache (default: $GENDISTILL_CACHE, "
                                                            "else ~/.cache/gendistill/eval)."),
    merge: list[str] = typer.Option(None, help="Instead of evaluating: combine these results.json files (runs over "
                                               "disjoint tasks) into one report in --out."),
) -> None:
    """Evaluate teacher and students under both protocols; report accuracy ± s.e., retention and the protocol gap.
    A thin wrapper over :func:`gendistill.evaluate`."""
    check_range(threads, 0, 4096, "--threads")
    if threads > 0:
        torch.set_num_threads(threads)

    if merge:
        _echo_paths(_merge(merge, out)["paths"])
        return
    res = evaluate(
        list(model or []), tasks, out=out, protocols=protocol, limit=limit, device=device, dtype=dtype,
        update_card=update_card, seed=seed, smoke=smoke, batch_size=batch_size, engine=engine,
        token_budget=token_budget, gpu_memory_fraction=gpu_memory_fraction, loglik_chat_template=loglik_chat_template,
        samples=samples, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
        data_source=data_source, fidelity_chat=fidelity_chat, fidelity_data=fidelity_data,
        fidelity_heldout=fidelity_heldout or None, show_progress=not no_progress,
        context_lengths=list(parse_lengths(context_lengths)) if context_lengths else None,
        depths=list(parse_depths(depths)) if depths else None, haystack=haystack, rope_scaling=rope_scaling,
        unsafe_allow_unsandboxed_code=unsafe_allow_unsandboxed_code, cache=not no_cache, cache_dir=cache_dir,
        command="gendistill eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
    )
    typer.echo(res.markdown())
    _echo_paths(res.paths)
    typer.echo(time_summary(res.raw["meta"]), err=True)


def _echo_paths(paths: dict) -> None:
    """The report's files, one ``kind: path`` line each."""
    for k, v in paths.items():
        typer.echo(f"{k}: {v}")


def _merge(files: list[str], out: str) -> dict:
    """``--merge``: the results files combined into one report in ``out``, written under the folder's lock
    (:mod:`gendistill.runlock`) once every file has been read."""
    check_report_folder(out, REPORT_FILES, "--out")
    parts = []
    for f in files:
        p = Path(f)
        if p.is_dir():
            p = p / "results.json"
        if not p.is_file():
            raise DataError(f"{p}: results file not found")
        try:
            parts.append(json.loads(p.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(parts[-1], dict) or "rows" not in parts[-1] or "meta" not in parts[-1]:
            raise DataError(f"{p}: not a gendistill eval results file (no 'rows'/'meta')")
    results = merge_results(parts)
    with acquire(out, "--out"):
        claim_report_folder(out, REPORT_FILES, "--out")
        results["paths"] = write_report(results, out)
    return results


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
