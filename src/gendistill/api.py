"""gendistill's Python API: one function per command, each returning a typed result.

==============================  =========================  ===================================================
function                        command                    result
==============================  =========================  ===================================================
:func:`convert`                 ``gendistill convert``     :class:`ConvertResult`
:func:`distill`                 ``gendistill distill``     :class:`~gendistill.distill.result.DistillResult`
:func:`evaluate`                ``gendistill eval``        :class:`EvalResult`
:func:`bench`                   ``gendistill bench``       :class:`BenchResult`
:func:`load`                    (every command's loader)   ``(model, tokenizer)``
:func:`push_to_hub`             --                         the hub commit URL
==============================  =========================  ===================================================

The commands are thin wrappers over these functions: the same arguments under the same names (``device`` and
``dtype`` default to ``"auto"``: cuda and bfloat16 when there is a GPU, else cpu and float32). Every user mistake
raises :class:`gendistill.errors.GendistillError` with one line naming what and where. Importing this module is cheap:
each function imports what it needs when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gendistill.errors import GendistillError

if TYPE_CHECKING:  # pragma: no cover
    from gendistill.distill.config import Recipe
    from gendistill.distill.result import DistillResult

DEFAULT_TEACHER = "smollm2-135m-instruct"


# ------------------------------------------------------------------------------------------------------------ convert
@dataclass
class ConvertResult:
    """A converted student.

    Attributes:
        student: the :class:`~gendistill.models.hybrid.HybridForCausalLM` in memory (eval mode).
        tokenizer: the teacher's tokenizer (with its chat template).
        out: the folder it was saved to (safetensors, config, tokenizer, ``README.md`` model card, ``SUMMARY.json``),
            or ``None`` when ``out`` was not given.
        summary: layers, parameters and cache bytes, teacher vs student
            (:class:`~gendistill.convert.summary.ConversionSummary`).
    """

    student: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    out: Path | None
    summary: Any

    @property
    def layer_spec(self) -> str:
        """``attention:…;kda:…`` (``gendistill convert --attention-layers`` reads it back)."""
        return self.student.config.layer_spec()


def convert(teacher: str = DEFAULT_TEACHER, attention_layers: str | list[int] = "every:4", out: str | Path | None = None,
            *, mixer: str = "kda", kv_mode: str = "repeat", gate_activation: str = "silu",
            conv_activation: str | None = None, dtype: str = "auto", device: str = "auto", seed: int = 0,
            overwrite: bool = False) -> ConvertResult:
    """Convert ``teacher`` (any model reference: short name, ``.gguf`` file, HF folder, hub id) into a hybrid student
    whose ``attention_layers`` keep softmax attention (``"0,2,6"``, ``"every:4"``, ``"ratio:0.25"``, ``"none"``,
    ``"all"``, a JSON file, or a :meth:`HybridConfig.layer_spec` string) and whose other layers become ``mixer``
    (``kda``, ``gated_deltanet``, ``gla``, ``mamba2``) initialised from the teacher's q/k/v/o projections.

    With ``out`` the student is saved there atomically with its model card (``overwrite`` replaces only a folder
    gendistill wrote). Every argument is checked before the teacher is loaded.

    >>> import gendistill
    >>> res = gendistill.convert("smollm2-135m-instruct", "every:4", out="runs/student")  # doctest: +SKIP
    >>> res.summary.student_params, res.layer_spec                                         # doctest: +SKIP
    """
    import json  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from gendistill.convert import convert_teacher, save_student  # noqa: PLC0415
    from gendistill.convert.summary import summarize  # noqa: PLC0415
    from gendistill.devices import resolve_device, resolve_dtype  # noqa: PLC0415
    from gendistill.layers.registry import LINEAR_MIXERS  # noqa: PLC0415
    from gendistill.models.card import public_model_name  # noqa: PLC0415
    from gendistill.models.hybrid.configuration_hybrid import check_kda_options  # noqa: PLC0415
    from gendistill.models.loading import load_model, resolve_model  # noqa: PLC0415
    from gendistill.ownership import check_replaceable, check_writable  # noqa: PLC0415

    if mixer not in LINEAR_MIXERS:
        raise GendistillError(f"unknown --mixer {mixer!r}; choose one of {', '.join(LINEAR_MIXERS)}")
    conv_act = None if conv_activation is None or str(conv_activation).lower() == "none" else conv_activation
    kda_options = dict(kda_kv_mode=kv_mode, kda_gate_activation=gate_activation, kda_conv_activation=conv_act)
    try:  # everything a user typed is checked before the teacher is loaded
        check_kda_options(kda_options)
    except ValueError as e:
        msg = str(e)
        for key, flag in (("kda_kv_mode", "--kv-mode"), ("kda_gate_activation", "--gate-activation"),
                          ("kda_conv_activation", "--conv-activation")):
            msg = msg.replace(key, flag)
        raise GendistillError(msg) from None
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if out is not None:
        out = Path(out)
        if out.exists() and not overwrite:
            raise GendistillError(f"--out: output folder {out} already exists (pass --overwrite to replace it)")
        if overwrite:
            check_replaceable(out, "student", "--out")
        check_writable(out, "--out")
    ref = resolve_model(teacher)
    if ref.kind == "student":
        raise GendistillError(f"--teacher: {teacher} is already a hybrid student; convert its teacher instead")
    model, tokenizer = load_model(ref, dtype=dt, device=dev)
    torch.manual_seed(seed)
    student = convert_teacher(model, attention_layers, linear_attention_type=mixer, **kda_options)
    student.config.teacher = public_model_name(teacher)
    summary = summarize(public_model_name(teacher) or str(teacher), model, student)
    if out is not None:
        save_student(student, tokenizer, out, overwrite=overwrite,
                     extra_files={"SUMMARY.json": json.dumps(summary.to_dict(), indent=2) + "\n"})
    return ConvertResult(student=student, tokenizer=tokenizer, out=out, summary=summary)


# ------------------------------------------------------------------------------------------------------------ distill
def distill(recipe: Recipe | str | Path, *, overrides: list[str] | None = None, resume: bool = False,
            overwrite: bool = False, dry_run: bool = False, allow_optim_change: bool = False,
            stop_after: int | None = None, teacher: Any = None, tokenizer: Any = None,
            student: Any = None) -> DistillResult:
    """Run a GenDistill recipe: stage 1 (mixer alignment), stage 2 (block alignment), stage 3a (KL on text), stage
    3b (chat KD, completion-only), saving the student (with its model card) after each stage.

    ``recipe``: a :class:`~gendistill.distill.config.Recipe`, a YAML file, or the name of a shipped recipe
    (``gendistill recipes`` lists them, e.g. ``"tiny-cpu"``). ``overrides``: ``"dotted.key=value"`` strings, as
    ``--set``. ``dry_run`` checks the recipe and every data source and builds the student, writing nothing.
    ``teacher``/``tokenizer``/``student`` may be given in memory instead of being loaded from the recipe.

    >>> res = gendistill.distill("tiny-cpu", overrides=["run.output_dir=runs/tiny"])  # doctest: +SKIP
    >>> res.final_student_dir, res.results["stage3b"].losses[-1]                          # doctest: +SKIP
    """
    from gendistill.distill.config import Recipe, load_recipe  # noqa: PLC0415
    from gendistill.distill.pipeline import run_recipe  # noqa: PLC0415
    from gendistill.errors import ConfigError  # noqa: PLC0415

    if allow_optim_change and not resume:
        raise ConfigError("--allow-optim-change only applies with --resume")
    if isinstance(recipe, Recipe):
        if overrides:
            raise ConfigError("overrides apply to a recipe file or name; change the Recipe object instead")
        r = recipe
    else:
        r = load_recipe(recipe, list(overrides or []))
    return run_recipe(r, resume=resume, overwrite=overwrite, dry_run=dry_run, stop_after=stop_after,
                      allow_optim_change=allow_optim_change, teacher=teacher, tokenizer=tokenizer, student=student)


# ----------------------------------------------------------------------------------------------------------- evaluate
@dataclass
class EvalResult:
    """What ``gendistill eval`` reports.

    Attributes:
        models: the models' labels, the first is the teacher.
        rows: one per (task, model, protocol): ``acc``, ``stderr``, ``n``, ``metric``, ``chance`` and more.
        comparisons: per student, task and protocol: retention vs the teacher and the perplexity gap.
        fidelity: greedy agreement (and teacher-forced top-1 / KL when asked) per student and task.
        paths: the report files written (``results.json``, ``results.md``, ``results.png``).
        meta: settings, versions, device, command, wall time.
        raw: the whole results mapping, as written to ``results.json``.
    """

    models: list[str]
    rows: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    fidelity: list[dict[str, Any]]
    paths: dict[str, str]
    meta: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_results(cls, results: dict[str, Any]) -> EvalResult:
        meta = results.get("meta", {})
        return cls(models=list(meta.get("models", [])), rows=list(results.get("rows", [])),
                   comparisons=list(results.get("comparisons", [])), fidelity=list(results.get("fidelity", [])),
                   paths=dict(results.get("paths", {})), meta=meta, raw=results)

    def accuracy(self, model: str, task: str, protocol: str = "generate") -> float:
        """The accuracy of ``model`` (a label from :attr:`models`) on ``task`` under ``protocol``."""
        for r in self.rows:
            if r["model"] == model and r["task"] == task and r["protocol"] == protocol:
                return float(r["acc"])
        raise KeyError(f"no result for model {model!r}, task {task!r}, protocol {protocol!r}")

    def markdown(self) -> str:
        """The report table (what ``gendistill eval`` prints)."""
        from gendistill.eval.report import markdown  # noqa: PLC0415

        return markdown(self.raw)


def evaluate(models: str | list[str], tasks: str | list[str] = "arc_easy", *, out: str | Path = "runs/eval",
             protocols: str | list[str] = ("loglik", "generate"), limit: int | None = None, device: str = "auto",
             dtype: str = "auto", update_card: bool = False, **options: Any) -> EvalResult:
    """Evaluate ``models`` (model references; the first is the teacher) on ``tasks`` (built-in names, ``all``,
    ``ruler``, ``.jsonl`` or ``.yaml`` task files) under both protocols: log-likelihood ranking and generation with
    answer extraction. Writes the report to ``out``. ``options`` are the other fields of
    :class:`gendistill.eval.runner.EvalConfig` (``seed``, ``smoke``, ``batch_size``, ``samples``,
    ``max_new_tokens``, ``fidelity_chat``, ...). ``update_card`` writes each evaluated student's rows into its
    model card (only in folders gendistill wrote). Tasks that execute model-written code (``humaneval``) are refused
    where the bubblewrap sandbox is missing unless ``unsafe_allow_unsandboxed_code=True`` (docs/eval.md, Sandbox).

    >>> res = gendistill.evaluate(["smollm2-135m-instruct", "runs/student"], "arc_easy,gsm8k", limit=50)  # doctest: +SKIP
    >>> print(res.markdown())                                                                           # doctest: +SKIP
    """
    import shlex  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from gendistill.eval.runner import EvalConfig, run_eval  # noqa: PLC0415
    from gendistill.ownership import check_writable  # noqa: PLC0415

    models = [models] if isinstance(models, (str, Path)) else [str(m) for m in models]
    tasks = tasks if isinstance(tasks, str) else ",".join(tasks)
    protocols = [p.strip() for p in protocols.split(",")] if isinstance(protocols, str) else list(protocols)
    if options.get("max_new_tokens") is not None and options["max_new_tokens"] < 1:
        raise GendistillError(f"--max-new-tokens must be at least 1, got {options['max_new_tokens']}")
    check_writable(out, "--out")  # checked before any model is loaded or task is run
    options.setdefault("command", " ".join(shlex.quote(a) for a in sys.argv))
    cfg = EvalConfig(models=[str(m) for m in models], tasks=tasks, protocols=[p for p in protocols if p],
                     limit=limit, out=str(out), device=device, dtype=dtype, **options)
    result = EvalResult.from_results(run_eval(cfg))
    if update_card:
        _update_cards(models, result)
    return result


def _update_cards(models: list[str], result: EvalResult) -> None:
    """Write each evaluated student folder's rows into its README.md (folders gendistill wrote only)."""
    from gendistill.io import atomic_write_text  # noqa: PLC0415
    from gendistill.models.card import update_evaluation  # noqa: PLC0415
    from gendistill.models.loading import resolve_model  # noqa: PLC0415
    from gendistill.ownership import marker_kind  # noqa: PLC0415

    for spec, label in zip(models, result.models):
        ref = resolve_model(spec)
        folder = Path(ref.location)
        if ref.kind != "student" or marker_kind(folder) != "student":
            continue
        card = folder / "README.md"
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
        rows = [r for r in result.rows if r["model"] == label]
        atomic_write_text(card, update_evaluation(text, rows))


# -------------------------------------------------------------------------------------------------------------- bench
@dataclass
class BenchResult:
    """What ``gendistill bench`` measured.

    Attributes:
        json_path: the results JSON (every measurement, settings, versions, device).
        plots: the PNG plots written beside it.
        data: the results mapping (``contexts``: per context length, teacher/student cache bytes, TTFT, decode
            tokens/s, peak throughput and their ratios; ``models``; ``settings``).
    """

    json_path: Path
    plots: list[str]
    data: dict[str, Any] = field(repr=False)

    def ratios(self, context: int) -> dict[str, Any]:
        """Student / teacher ratios (cache, TTFT, decode, throughput) at ``context`` tokens."""
        for c in self.data.get("contexts", []):
            if c.get("context") == context:
                return dict(c.get("ratios", {}))
        raise KeyError(f"context {context} was not measured")


def bench(teacher: str | None = None, student: str | None = None, *, config: str = "qwen3-0.6b", tiny: bool = False,
          device: str = "auto", dtype: str = "auto", out: str | Path = "runs/bench", plots: bool = True,
          table: bool = True, **options: Any) -> BenchResult:
    """Measure cache memory, time-to-first-token, decode speed and peak throughput of a teacher and its hybrid
    student in one run. ``teacher``: any model reference (short name, ``.gguf``, folder, hub id); ``student``: a
    saved student (default: the teacher converted at ``attention_layers``). Without a teacher, ``config`` names a
    shape with random weights (``qwen3-0.6b`` or ``tiny``); ``tiny=True`` runs the tiny shape on CPU in seconds.
    ``options``: the other ``gendistill bench`` options under their Python names (``contexts="1k,4k"``,
    ``attention_layers="0,2"``, ``skip="throughput"``, ``repeats=3``, ...).

    >>> res = gendistill.bench(tiny=True, out="runs/bench-tiny")  # doctest: +SKIP
    >>> res.ratios(128)["cache_measured_student_over_teacher"]      # doctest: +SKIP
    """
    from gendistill.bench.runner import run_benchmark  # noqa: PLC0415
    from gendistill.bench.settings import check_settings, settings_from_options  # noqa: PLC0415

    settings = settings_from_options(teacher=teacher, student=student, config=config, tiny=tiny, device=device,
                                     dtype=dtype, out=str(out), **options)
    check_settings(settings)
    data = run_benchmark(settings, plots=plots, table=table)
    return BenchResult(json_path=Path(data["json_path"]), plots=list(data.get("plots", [])), data=data)


# ------------------------------------------------------------------------------------------------------ load / share
def load(model: str | Path, *, dtype: str = "auto", device: str = "auto"):
    """``(model, tokenizer)`` for any model reference: a short name, a ``.gguf`` file, a local HF folder, a saved
    student, a hub id (teacher or pushed student). See :func:`gendistill.models.loading.load_model`."""
    from gendistill.models.loading import load_model  # noqa: PLC0415

    return load_model(model, dtype=dtype, device=device)


#: files of a student folder that stay on this machine (gendistill's ownership marker)
_LOCAL_ONLY = (".gendistill.json",)


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload hybrid student (gendistill)") -> str:
    """Upload a saved student folder (weights, config, tokenizer, ``README.md`` model card) to the hub as it is, in
    one commit through ``huggingface_hub`` (the library transformers' own ``push_to_hub`` uses); returns the commit
    URL. gendistill's local ownership marker stays behind. (``model.push_to_hub`` from transformers works too, but
    replaces the card with a generic one.)"""
    from huggingface_hub import CommitOperationAdd, HfApi  # noqa: PLC0415

    from gendistill.models.loading import is_student_folder  # noqa: PLC0415

    folder = Path(folder)
    if not is_student_folder(folder):
        raise GendistillError(f"{folder} is not a saved gendistill student (no hybrid config.json)")
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in _LOCAL_ONLY]
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    ops = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files]
    info = api.create_commit(repo_id=repo, operations=ops, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def callable_module(module_name: str, fn: Any) -> None:
    """Make the sub-package ``module_name`` callable as ``fn``.

    ``gendistill.convert``, ``gendistill.distill`` and ``gendistill.bench`` are sub-packages *and* the API functions
    of the same names: a plain function attribute would be replaced by the sub-package the first time anything
    imports from it (and would break ``import gendistill.distill.trainer as t``). Calling the package calls the
    function; ``inspect.signature`` and ``help(...)`` of the call show the function's."""
    import inspect  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import types  # noqa: PLC0415

    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        __call__ = staticmethod(fn)

        @property
        def __signature__(self) -> inspect.Signature:  # noqa: D401  (inspect.signature(gendistill.convert))
            return inspect.signature(fn)

    _CallableModule.__name__ = f"callable_module[{fn.__name__}]"
    _CallableModule.__doc__ = fn.__doc__
    module.__class__ = _CallableModule


__all__ = ["convert", "distill", "evaluate", "bench", "load", "push_to_hub", "ConvertResult", "EvalResult",
           "BenchResult", "DEFAULT_TEACHER", "callable_module"]
