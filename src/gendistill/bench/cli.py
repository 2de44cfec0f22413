"""``gendistill bench``: inference efficiency of the hybrid student against its teacher (see docs/bench.md)."""

from __future__ import annotations

import shlex
import sys

import typer

from gendistill.bench.settings import MEASUREMENTS, BenchSettings
from gendistill.cli_utils import user_errors
from gendistill.errors import ConfigError, GendistillError


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        vals = []
        for part in text.split(","):
            part = part.strip().lower()
            if not part:
                continue
            mult = 1024 if part.endswith("k") else 1
            vals.append(int(part.rstrip("k")) * mult)
        return tuple(vals)
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers (1024 or 1k), got {text!r}") from None


@user_errors
def bench(
    config: str = typer.Option("qwen3-0.6b", help="Named shape with random weights: qwen3-0.6b | tiny."),
    teacher: str = typer.Option(None, help="Teacher folder (HF causal LM); overrides --config."),
    student: str = typer.Option(None, help="Student folder (saved HybridForCausalLM); default: convert the teacher."),
    attention_layers: str = typer.Option(None, help="Attention layers of the converted student (default 0,2,6,11,13,18,21)."),
    contexts: str = typer.Option(None, help="Contexts for cache/TTFT/decode, e.g. 1k,4k,16k,32k,64k,128k."),
    throughput_contexts: str = typer.Option(None, help="Contexts of the batch sweep (default 4k,16k,32k,64k)."),
    dtype: str = typer.Option("auto", help="auto | bf16 | fp16 | fp32 (auto: bf16 on cuda, fp32 on cpu)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu."),
    out: str = typer.Option("runs/bench", help="Output folder (JSON + PNG plots)."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny shape on CPU in seconds (what the tests run)."),
    skip: str = typer.Option("", help=f"Comma-separated measurements to skip: {','.join(MEASUREMENTS)}."),
    max_batch: int = typer.Option(None, help="Upper bound of the throughput batch sweep."),
    repeats: int = typer.Option(None, help="Timed repeats per measurement (median reported)."),
    warmup: int = typer.Option(None, help="Warm-up runs at each shape before timing."),
    decode_tokens: int = typer.Option(None, help="Tokens per timed decode repeat (batch 1)."),
    throughput_tokens: int = typer.Option(None, help="Decode steps timed at the batch the sweep found."),
    decode_cache: str = typer.Option("static", help="static (preallocated KV; graphs possible) | dynamic (HF default "
                                      "DynamicCache, grows by torch.cat; eager only)."),
    cuda_graph: bool = typer.Option(True, "--cuda-graph/--no-cuda-graph", help="CUDA-graph the batch-1 decode step."),
    validate_graph: bool = typer.Option(True, "--validate-graph/--no-validate-graph",
                                        help="Check graph decode == eager once per model."),
    prefill_graph: bool = typer.Option(True, "--prefill-graph/--no-prefill-graph",
                                       help="Also time each prefill captured in a CUDA graph, both models (validated "
                                       "against eager first; CUDA only): TTFT without launch overhead."),
    profile_contexts: str = typer.Option(None, help="Profile one prefill + decode steps per model at these contexts "
                                         "(torch.profiler; time split by attention/KDA/MLP/lm_head), e.g. 4k,128k."),
    roles: str = typer.Option("teacher,student", help="Models to measure (one of them while iterating; ratios need both)."),
    compare: str = typer.Option(None, help="A previous bench JSON to print this run against."),
    time_limit: float = typer.Option(0.0, help="Seconds after which remaining measurements are skipped (0: none)."),
    model_name: str = typer.Option(None, help="Label for file names (default: config or teacher folder name)."),
) -> None:
    """Cache memory, time-to-first-token, decode speed and peak throughput of teacher vs student, in one run."""
    from gendistill.bench.runner import run_benchmark

    settings = settings_from_options(
        config=config, teacher=teacher, student=student, attention_layers=attention_layers, contexts=contexts,
        throughput_contexts=throughput_contexts, dtype=dtype, device=device, out=out, tiny=tiny, skip=skip,
        max_batch=max_batch, repeats=repeats, warmup=warmup, decode_tokens=decode_tokens,
        throughput_tokens=throughput_tokens, cuda_graph=cuda_graph, validate_graph=validate_graph,
        prefill_graph=prefill_graph, time_limit=time_limit, model_name=model_name, profile_contexts=profile_contexts,
        roles=roles,
        compare=compare, decode_cache=decode_cache,
    )
    check_settings(settings)
    run_benchmark(settings)


def check_settings(s: BenchSettings) -> None:
    """Every user mistake the benchmark can meet, as one line before anything is built: an unknown shape, a missing
    or unsupported model folder, an attention layer out of range, CUDA asked for but absent, an unwritable --out."""
    import json
    from pathlib import Path

    import torch

    from gendistill.bench.models import qwen3_config
    from gendistill.bench.runner import DTYPES
    from gendistill.convert.layer_spec import parse_attention_layers
    from gendistill.models.hybrid.families import get_family
    from gendistill.ownership import check_writable

    if s.device not in ("auto", "cpu") and not s.device.startswith("cuda"):
        raise ConfigError(f"--device: expected auto, cuda, cuda:N or cpu, got {s.device!r}")
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {s.device}: CUDA is not available on this machine; use --device cpu (or --tiny)")
    if s.dtype != "auto" and s.dtype not in DTYPES:
        raise ConfigError(f"--dtype: expected auto, bf16, fp16 or fp32, got {s.dtype!r}")
    for flag, folder in (("--teacher", s.teacher), ("--student", s.student)):
        if folder is not None and not (Path(folder) / "config.json").is_file():
            raise ConfigError(f"{flag}: {folder} is not a model folder (no config.json)")
    if s.teacher:
        cfg = json.loads((Path(s.teacher) / "config.json").read_text())
        get_family(cfg.get("model_type", "?"))
        layers = cfg.get("num_hidden_layers", 0)
    else:
        layers = qwen3_config(s.config or "?").num_hidden_layers
    if s.student:
        scfg = json.loads((Path(s.student) / "config.json").read_text())
        if scfg.get("model_type") != "hybrid_kda":
            raise ConfigError(f"--student: {s.student} is not a gendistill student (model_type "
                              f"{scfg.get('model_type')!r}, expected 'hybrid_kda')")
    elif s.attention_layers:
        try:
            parse_attention_layers(list(s.attention_layers), layers)
        except ConfigError:
            raise
        except GendistillError as e:
            raise ConfigError(f"--attention-layers: {e}") from None
    check_writable(s.out, "--out")


def settings_from_options(**o) -> BenchSettings:
    skip = tuple(x.strip() for x in (o.get("skip") or "").split(",") if x.strip())
    bad = [x for x in skip if x not in MEASUREMENTS]
    if bad:
        raise ConfigError(f"--skip: unknown {bad}; known: {list(MEASUREMENTS)}")
    overrides = {
        k: v
        for k, v in dict(
            teacher=o.get("teacher"),
            student=o.get("student"),
            attention_layers=_ints(o.get("attention_layers"), "--attention-layers"),
            contexts=_ints(o.get("contexts"), "--contexts"),
            throughput_contexts=_ints(o.get("throughput_contexts"), "--throughput-contexts"),
            max_batch=o.get("max_batch"),
            repeats=o.get("repeats"),
            warmup=o.get("warmup"),
            decode_tokens=o.get("decode_tokens"),
            throughput_tokens=o.get("throughput_tokens"),
            model_name=o.get("model_name"),
            profile_contexts=_ints(o.get("profile_contexts"), "--profile-contexts"),
        ).items()
        if v is not None
    }
    roles = tuple(r.strip() for r in (o.get("roles") or "teacher,student").split(",") if r.strip())
    if not roles or any(r not in ("teacher", "student") for r in roles):
        raise ConfigError(f"--roles: expected teacher and/or student, got {o.get('roles')!r}")
    overrides["roles"] = roles
    if o.get("decode_cache", "static") not in ("static", "dynamic"):
        raise ConfigError(f"--decode-cache: static or dynamic, got {o.get('decode_cache')!r}")
    overrides["decode_cache"] = o.get("decode_cache", "static")
    if o.get("compare"):
        overrides["compare"] = o["compare"]
    if o.get("dtype", "auto") != "auto":
        overrides["dtype"] = o["dtype"]
    if o.get("device", "auto") != "auto":
        overrides["device"] = o["device"]
    common = dict(
        out=o.get("out", "runs/bench"),
        skip=skip,
        cuda_graph=o.get("cuda_graph", True),
        validate_graph=o.get("validate_graph", True),
        prefill_graph=o.get("prefill_graph", True),
        time_limit_s=o.get("time_limit", 0.0) or 0.0,
        command=_command_line(),
    )
    if o.get("tiny") or o.get("config") == "tiny":
        return BenchSettings.tiny(**{**common, **overrides})
    if o.get("teacher"):
        overrides["config"] = None
    else:
        overrides["config"] = o.get("config", "qwen3-0.6b")
    return BenchSettings(**{**common, **overrides})


def _command_line() -> str:
    if not sys.argv:
        return ""
    prog = sys.argv[0]
    head = ["gendistill"] if prog.endswith("gendistill") or prog.endswith("cli.py") else ["python", prog]
    return " ".join([*head, *map(shlex.quote, sys.argv[1:])])


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
