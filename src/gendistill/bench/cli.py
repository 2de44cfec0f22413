"""``gendistill bench``: inference efficiency of the hybrid student against its teacher (see docs/bench.md)."""

from __future__ import annotations

import typer

from gendistill.bench.api import bench as run
from gendistill.bench.settings import MEASUREMENTS, check_settings, settings_from_options  # noqa: F401  (importable here)
from gendistill.devices import DEVICE_HELP, DTYPE_HELP


def bench(
    config: str = typer.Option("qwen3-0.6b", help="Named shape with random weights: qwen3-0.6b | tiny."),
    teacher: str = typer.Option(None, "--teacher", "-t", help="Teacher: short name (smollm2-135m-instruct), .gguf "
                                                             "file, HF folder or hub id; overrides --config."),
    student: str = typer.Option(None, "--student", "-s", help="Saved student folder or hub id; default: convert "
                                                             "the teacher at --attention-layers."),
    attention_layers: str = typer.Option(None, help="Attention layers of the converted student, in any form `convert "
                                         "--attention-layers` takes: 0,2,6, every:4, ratio:0.25, ... (default "
                                         "0,2,6,11,13,18,21)."),
    kda_gate_lower_bound: float = typer.Option(None, help="Convert the student with fla's bounded KDA decay gate "
                                                "(a number in [-5, 0); see `gendistill convert --help`); default: the "
                                                "paper's gate. Time it beside the exact student with --compare."),
    contexts: str = typer.Option(None, help="Contexts for cache/TTFT/decode, e.g. 1k,4k,16k,32k,64k,128k."),
    throughput_contexts: str = typer.Option(None, help="Contexts of the batch sweep (default 4k,16k,32k,64k)."),
    dtype: str = typer.Option("auto", help=f"{DTYPE_HELP}."),
    device: str = typer.Option("auto", help=f"{DEVICE_HELP}."),
    out: str = typer.Option("runs/bench", "--out", "-o", help="Output folder (JSON + PNG plots)."),
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
                                       help="Also time each prefill up to 32K captured in a CUDA graph, both models "
                                       "(checked against eager first; CUDA only): TTFT without launch overhead."),
    profile_contexts: str = typer.Option(None, help="Profile one prefill + decode steps per model at these contexts "
                                         "(torch.profiler; time split by attention/KDA/MLP/lm_head), e.g. 4k,128k."),
    roles: str = typer.Option("teacher,student", help="Models to measure (one of them while iterating; ratios need both)."),
    compare: str = typer.Option(None, help="A previous bench JSON to print this run against."),
    time_limit: float = typer.Option(0.0, help="Seconds after which remaining measurements are skipped (0: none)."),
    model_name: str = typer.Option(None, help="Label for file names (default: config or teacher folder name)."),
) -> None:
    """Cache memory, time-to-first-token, decode speed and peak throughput of teacher vs student, in one run. A thin
    wrapper over :func:`gendistill.bench`."""
    run(teacher, student, config=config, tiny=tiny, device=device, dtype=dtype, out=out,
        attention_layers=attention_layers, kda_gate_lower_bound=kda_gate_lower_bound, contexts=contexts,
        throughput_contexts=throughput_contexts, skip=skip,
        max_batch=max_batch, repeats=repeats, warmup=warmup, decode_tokens=decode_tokens,
        throughput_tokens=throughput_tokens, cuda_graph=cuda_graph, validate_graph=validate_graph,
        prefill_graph=prefill_graph, time_limit=time_limit, model_name=model_name,
        profile_contexts=profile_contexts, roles=roles, compare=compare, decode_cache=decode_cache)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
