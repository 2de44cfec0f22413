"""Benchmark settings (one dataclass, filled by the CLI or by tests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# The paper's / issue's grid.
DEFAULT_CONTEXTS = (1024, 4096, 8192, 16384, 32768, 65536, 131072)  # 8K: the decode target starts there
DEFAULT_THROUGHPUT_CONTEXTS = (4096, 16384, 32768, 65536)
PAPER_ATTENTION_LAYERS = (0, 2, 6, 11, 13, 18, 21)

# --tiny: a shape that runs end to end on CPU in seconds (used by tests so the benchmark does not rot).
TINY_CONTEXTS = (32, 128)
TINY_THROUGHPUT_CONTEXTS = (32, 128)
TINY_ATTENTION_LAYERS = (0, 4)

MEASUREMENTS = ("cache", "ttft", "decode", "throughput")


@dataclass
class BenchSettings:
    config: str | None = "qwen3-0.6b"  # named shape with random weights ("qwen3-0.6b" | "tiny"), or None with paths
    teacher: str | None = None  # folder of an HF causal LM
    student: str | None = None  # folder of a saved HybridForCausalLM
    attention_layers: tuple[int, ...] = PAPER_ATTENTION_LAYERS
    contexts: tuple[int, ...] = DEFAULT_CONTEXTS
    throughput_contexts: tuple[int, ...] = DEFAULT_THROUGHPUT_CONTEXTS
    device: str = "auto"  # auto | cuda | cpu
    dtype: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | bf16 | fp16 | fp32
    attn_implementation: str = "sdpa"  # same backend for teacher and student's attention layers
    skip: tuple[str, ...] = ()
    roles: tuple[str, ...] = ("teacher", "student")  # measure only one of them while iterating (ratios need both)
    compare: str | None = None  # a previous bench JSON: print this run's numbers against it
    # timing
    warmup: int = 1  # warm-up runs at each shape (Triton autotuning, cuBLAS heuristics) before timing
    repeats: int = 3  # timed repeats (median reported); reduced when one run exceeds `measure_budget_s`
    measure_budget_s: float = 6.0  # soft wall-clock budget for the timed repeats of one measurement
    decode_tokens: int = 32  # tokens per timed decode repeat (batch 1)
    decode_warmup_tokens: int = 8
    decode_cache: str = "static"  # static (preallocated KV, graph-capturable) | dynamic (HF default, torch.cat growth)
    cuda_graph: bool = True  # capture the batch-1 decode step in a CUDA graph (CUDA only; eager on CPU)
    validate_graph: bool = True  # check graph decode == eager decode once per model before trusting it
    prefill_graph: bool = True  # also time each prefill captured in a CUDA graph (CUDA only; validated first)
    # ... up to this context: beyond it launch overhead is a rounding error of the prefill (and a capture costs
    # several prefills of time and a graph pool of activations)
    prefill_graph_max_context: int = 32768
    # throughput sweep
    max_batch: int = 1024
    throughput_tokens: int = 16  # decode steps timed (x2 repeats) at the batch found
    sweep_rel_tol: float = 0.125  # stop bisecting when the bracket is within this fraction of the batch
    # profiling (torch.profiler, time split by attention / KDA / MLP / lm_head) at these contexts; () = off
    profile_contexts: tuple[int, ...] = ()
    profile_decode_steps: int = 8
    # bookkeeping
    out: str = "runs/bench"
    time_limit_s: float = 0.0  # 0 = none; else measurements that would start after this are skipped (outputs kept)
    seed: int = 0
    command: str = ""
    model_name: str | None = None  # label used in file names; derived when None
    extra: dict = field(default_factory=dict)

    def wants(self, what: str) -> bool:
        return what not in self.skip

    def to_dict(self) -> dict:
        d = asdict(self)
        d["contexts"] = list(self.contexts)
        d["throughput_contexts"] = list(self.throughput_contexts)
        d["attention_layers"] = list(self.attention_layers)
        d["skip"] = list(self.skip)
        d["roles"] = list(self.roles)
        d["profile_contexts"] = list(self.profile_contexts)
        return d

    @classmethod
    def tiny(cls, **overrides) -> "BenchSettings":
        base = dict(
            config="tiny",
            attention_layers=TINY_ATTENTION_LAYERS,
            contexts=TINY_CONTEXTS,
            throughput_contexts=TINY_THROUGHPUT_CONTEXTS,
            device="cpu",
            dtype="fp32",
            warmup=1,
            repeats=2,
            decode_tokens=3,
            decode_warmup_tokens=1,
            max_batch=4,
            throughput_tokens=2,
            sweep_rel_tol=0.0,
            measure_budget_s=2.0,
        )
        base.update(overrides)
        return cls(**base)
