"""Orchestration: every measurement for teacher and student, in one process, on one device; results as a dict that
is written to JSON after every step (a run killed half way still leaves its numbers)."""

from __future__ import annotations

import gc
import os
import platform
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

from gendistill.bench import cache as cachemod
from gendistill.bench import engine
from gendistill.bench.models import build_models, count_params, layer_type_counts
from gendistill.bench.profile import profile_model
from gendistill.bench.ratios import ratios, summary
from gendistill.bench.report import file_stem, load_baseline, make_plots, print_comparison, print_table
from gendistill.bench.settings import BenchSettings
from gendistill.bench.sweep import free_memory, is_oom, peak_allocated
from gendistill.bench.throughput import measure_throughput
from gendistill.bench.timing import measure, sync
from gendistill.devices import resolve_device, resolve_dtype
from gendistill.io import atomic_write_json
from gendistill.layers.base import joined_weights
from gendistill.models.decoding import require_full_attention
from gendistill.ownership import check_report_folder, claim_report_folder
from gendistill.runlock import acquire

ROLES = ("teacher", "student")
SCHEMA_VERSION = 1
#: the joined-weights check's context when the run names no context length at all (every measurement skipped)
JOINS_CHECK_FALLBACK_CONTEXT = 128


class _Log:
    def __init__(self, sink: Callable[[str], None] | None):
        self.t0 = time.perf_counter()
        self.sink = sink

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __call__(self, msg: str) -> None:
        line = f"[bench {self.elapsed():7.1f}s] {msg}"
        if self.sink is None:
            print(line, flush=True)
        else:
            self.sink(line)


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}"


def versions() -> dict:
    out = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    for key, dist in (("fla", "flash-linear-attention"), ("fla_core", "fla-core"), ("triton", "triton")):
        try:  # metadata only: importing fla costs ~10 s on a busy CPU
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    out["cuda"] = torch.version.cuda
    return out


def _err(exc: BaseException) -> str:
    kind = "oom" if is_oom(exc) else type(exc).__name__
    return f"{kind}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _mem_allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class Runner:
    def __init__(self, settings: BenchSettings, log_sink: Callable[[str], None] | None = None):
        self.s = settings
        self.log = _Log(log_sink)
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.use_graph = settings.cuda_graph and self.device.type == "cuda"
        self.use_prefill_graph = settings.prefill_graph and self.device.type == "cuda"
        self.roles = tuple(r for r in ROLES if r in settings.roles)
        self.results: dict[str, Any] = {}
        self.out_dir = Path(settings.out)
        self.json_path: Path | None = None

    # ----------------------------------------------------------------------------------------------- bookkeeping
    def out_of_time(self) -> bool:
        return bool(self.s.time_limit_s) and self.log.elapsed() > self.s.time_limit_s

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.results["elapsed_s"] = round(self.log.elapsed(), 2)
        atomic_write_json(self.json_path, self.results)

    def _guard(self, entry: dict, what: str, fn: Callable[[], None]) -> None:
        """Run one measurement; OOM and other failures are recorded in ``entry['errors']`` and the run goes on."""
        if self.out_of_time():
            entry.setdefault("errors", {})[what] = "skipped: time limit"
            self.log(f"  {what}: skipped (time limit {self.s.time_limit_s}s)")
            return
        failed = False
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            failed = True
            entry.setdefault("errors", {})[what] = _err(exc)
            self.log(f"  {what}: FAILED {_err(exc)}")
            if not is_oom(exc):
                entry.setdefault("tracebacks", {})[what] = traceback.format_exc(limit=8)
        if failed:
            free_memory()  # outside the except block, once the traceback's frames (and their tensors) are released

    # ----------------------------------------------------------------------------------------------- main
    def run(self) -> dict:
        s = self.s
        torch.manual_seed(s.seed)
        self.log(f"device={self.device} dtype={self.dtype} graph={self.use_graph}")
        if self.device.type == "cpu" and s.config not in (None, "tiny") and not (s.teacher or s.student):
            self.log(f"note: the {s.config} shape on a CPU takes seconds per prefill and minutes per context; "
                     "--tiny measures a small shape in seconds (the paper's figures need a GPU: --device cuda)")
        pair = build_models(s, self.device, self.dtype)
        self.models = {"teacher": pair.teacher, "student": pair.student}
        for role, m in self.models.items():  # static-cache decode and the cache arithmetic assume full attention
            require_full_attention(m.config, f"the bench {role}")
        card = card_name(self.device)
        self.results = {
            "schema_version": SCHEMA_VERSION,
            "model": pair.name,
            "card": card,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "versions": versions(),
            "commit": os.environ.get("COMMIT"),  # the lease scripts' (a device copy's git metadata may be stale)
            "command": s.command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": s.to_dict(),
            "student_is_standin": pair.student_is_standin,
            "note": pair.note,
            "models": {
                r: {
                    "class": type(m).__name__,
                    "params": count_params(m),
                    "layer_types": layer_type_counts(m),
                    "attn_implementation": getattr(m.config, "_attn_implementation", None),
                    **({"kda_gate_lower_bound": getattr(m.config, "kda_gate_lower_bound", None)}
                       if r == "student" else {}),
                }
                for r, m in self.models.items()
            },
            "cuda_graph": {"enabled": self.use_graph},
            "theoretical_cache_curve": self.cache_curve(),
            "contexts": [],
        }
        self.json_path = self.out_dir / f"bench_{file_stem(pair.name, card)}.json"
        self.log(f"models built: teacher {self.results['models']['teacher']}, student {self.results['models']['student']}")
        self.save()

        self.joins_check()
        self.save()
        if self.use_graph and (s.wants("decode") or s.wants("throughput")) and s.decode_cache == "static":
            self.graph_precheck()  # decode and the throughput sweep step through graphs only if both models pass
            self.save()
        by_ctx: dict[int, dict] = {}
        all_ctx = sorted(set(s.contexts) | (set(s.throughput_contexts) if s.wants("throughput") else set()))
        for L in all_ctx:
            entry = {"context": L, "teacher": {}, "student": {}}
            by_ctx[L] = entry
            self.results["contexts"].append(entry)
        for L in sorted(s.contexts):
            for role in self.roles:
                self.log(f"context {L}: {role}")
                with joined_weights(self.models[role]):  # the student's mixers on weights joined once
                    self.measure_context(role, L, by_ctx[L][role])
                by_ctx[L]["ratios"] = ratios(by_ctx[L])
                self.save()
        if s.wants("throughput"):
            for L in sorted(s.throughput_contexts):
                for role in self.roles:
                    self.log(f"throughput sweep at {L}: {role}")
                    e = by_ctx[L][role]
                    if "cache_bytes_theoretical" not in e:
                        self.cache_entry(role, L, e)
                    with joined_weights(self.models[role]):
                        self._guard(e, "throughput", lambda: measure_throughput(
                            self.models[role], L, e, s, self.device, self.dtype, self.log,
                            graphed=bool(self.results["cuda_graph"].get("used"))))
                    by_ctx[L]["ratios"] = ratios(by_ctx[L])
                    self.save()
        if s.profile_contexts:
            (self.out_dir / "profiles.txt").unlink(missing_ok=True)
        for L in sorted(s.profile_contexts):
            for role in self.roles:
                self.log(f"profile at {L}: {role}")
                prof = self.results.setdefault("profile", {}).setdefault(str(L), {})
                prof[role] = {}
                with joined_weights(self.models[role]):
                    self._guard(prof[role], "profile", lambda: prof[role].update(self.profile(role, L)))
                self.save()
        self.results["summary"] = summary(self.results)
        self.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()
        self.log(f"wrote {self.json_path}")
        return self.results

    # ----------------------------------------------------------------------------------------------- cache arithmetic
    def cache_curve(self) -> dict:
        top = max([*self.s.contexts, *self.s.throughput_contexts, 131072 if self.s.config != "tiny" else 0])
        lengths, n = [], 16 if self.s.config == "tiny" else 512
        while n <= top:
            lengths.append(n)
            n *= 2
        out: dict[str, Any] = {"lengths": lengths}
        for role, m in self.models.items():
            out[role] = [cachemod.theoretical_cache_bytes(m.config, L, 1, self.dtype)["total"] for L in lengths]
        return out

    def cache_entry(self, role: str, L: int, e: dict) -> None:
        m = self.models[role]
        e["cache_bytes_theoretical"] = cachemod.theoretical_cache_bytes(m.config, L, 1, self.dtype)
        try:
            api = cachemod.model_api_cache_bytes(m, L, 1)
        except Exception as exc:  # noqa: BLE001
            api = None
            e.setdefault("errors", {})["cache_bytes_model_api"] = _err(exc)
        if api is not None:
            e["cache_bytes_model_api"] = api
            e["cache_theory_matches_model_api"] = api.get("total") == e["cache_bytes_theoretical"]["total"]

    # ----------------------------------------------------------------------------------------------- per context
    def measure_context(self, role: str, L: int, e: dict) -> None:
        s, m = self.s, self.models[role]
        self.cache_entry(role, L, e)
        if not (s.wants("ttft") or s.wants("decode") or s.wants("cache")):
            return
        ids = engine.random_prompt(m.config.vocab_size, L, 1, self.device, s.seed + L)
        holder: dict[str, Any] = {}

        def clear() -> None:
            holder.clear()  # the previous run's cache goes by refcount; gc.collect() costs ~0.5 s per call
            _reset_peak(self.device)

        def run_prefill() -> None:
            holder["cache"], holder["next"] = engine.prefill(m, ids)

        base = _mem_allocated(self.device)

        def record_prefill_peak() -> None:
            """Peak allocated during the prefill just run (``clear()`` reset the counter before it) minus what was
            allocated before: read at once, before a graphed prefill or ``free_memory()`` resets the counter."""
            peak = peak_allocated(self.device)
            e["peak_mem_bytes_prefill"] = None if peak is None else peak - base

        def ttft() -> None:
            t = measure(run_prefill, self.device, warmup=s.warmup, repeats=s.repeats, budget_s=s.measure_budget_s,
                        setup=clear)
            record_prefill_peak()
            e["ttft_ms"] = t.median_ms
            e["ttft_ms_all"] = t.all_ms
            e["ttft_warmup_ms"] = t.warmup_ms
            self.log(f"  ttft {t.median_ms:.2f} ms (runs {[round(x, 2) for x in t.all_ms]})")

        def ttft_graph() -> None:
            graphed = engine.GraphedPrefill(m, ids)
            check = engine.validate_graphed_prefill(m, graphed)
            e["ttft_graph_check"] = check
            if check["accepted"]:
                t = measure(graphed, self.device, warmup=1, repeats=s.repeats, budget_s=s.measure_budget_s)
                e["ttft_graph_ms"], e["ttft_graph_ms_all"] = t.median_ms, t.all_ms
                self.log(f"  ttft (CUDA graph) {t.median_ms:.2f} ms (runs {[round(x, 2) for x in t.all_ms]})")
            else:
                self.log(f"  ttft (CUDA graph) rejected: {check}")
            del graphed

        if s.wants("ttft"):
            self._guard(e, "ttft", ttft)
            if self.use_prefill_graph and L <= s.prefill_graph_max_context:
                self._guard(e, "ttft_graph", ttft_graph)
                free_memory()
        if "cache" not in holder and (s.wants("decode") or s.wants("cache")):
            self._guard(e, "prefill", lambda: (clear(), run_prefill(), record_prefill_peak()))
        if "cache" in holder:
            e["cache_bytes_measured"] = cachemod.measured_cache_bytes(holder["cache"], m.config)
            th, me = e["cache_bytes_theoretical"], e["cache_bytes_measured"]
            e["kv_theory_matches_measured"] = th[cachemod.FULL] == me.get(cachemod.FULL, 0)
            if s.wants("decode"):
                self._guard(e, "decode", lambda: self.decode(role, L, e, holder))
        elif s.wants("decode"):  # wanted but never ran: the table's decode cells give the prefill's reason, not "-"
            errors = e.setdefault("errors", {})
            errors["decode"] = f"{errors.get('prefill') or errors.get('ttft') or 'not run'} (prefill)"
        holder.clear()
        del ids
        free_memory()

    def joins_check(self) -> None:
        """Before any timing: the student on weights joined once (how every timed student call runs:
        :func:`joined_weights`) against the live weights, at the shortest context (at most 4K): the prefill (same next
        token and cache within bf16 rounding, :func:`engine.compare_prefills`) and one decode step from each cache
        (where every linear that reads a mixer's input is one GEMM: its logits within 1 % of their largest
        magnitude). Recorded as ``joined_weights_check``. The context is the shortest of ``--contexts`` and
        ``--throughput-contexts`` (either may be empty when its measurements are skipped), else
        :data:`JOINS_CHECK_FALLBACK_CONTEXT`."""
        lengths = [*self.s.contexts, *self.s.throughput_contexts]
        m, L = self.models["student"], min(min(lengths), 4096) if lengths else JOINS_CHECK_FALLBACK_CONTEXT
        try:
            with torch.inference_mode():
                prompt = engine.random_prompt(m.config.vocab_size, L, 1, self.device)
                live = engine.prefill(m, prompt)
                with joined_weights(m):
                    joined = engine.prefill(m, prompt)
                    entry = {"context": L, **engine.compare_prefills(live, joined)}  # before the steps extend them
                    step_joined = engine.forward(m, live[1], joined[0]).logits.float()
                step_live = engine.forward(m, live[1], live[0]).logits.float()
                rel = ((step_joined - step_live).abs().max() / step_live.abs().max().clamp_min(1e-6)).item()
                entry["decode_step_rel_diff"] = rel
                entry["accepted"] = entry["accepted"] and rel <= 1e-2
        except Exception as exc:  # noqa: BLE001 - recorded; the timings still run, on the joins
            entry = {"context": L, "accepted": False, "error": _err(exc)}
        self.results["joined_weights_check"] = entry
        self.log(f"joined weights check (student, {L} tokens): {entry}"
                 + ("" if entry["accepted"] else "  FAILED: the timed student is not the student"))
        free_memory()

    def graph_precheck(self) -> None:
        """Before any timing: capture each model's decode step in a CUDA graph at a short context and check it decodes
        what eager decodes (teacher-forced, same cache state). Graphs are used only if both models pass, so decode
        ratios always compare like with like."""
        info = self.results["cuda_graph"]
        L, steps = 128, 4
        for role in self.roles:
            m = self.models[role]
            entry: dict = {"context": L}
            with joined_weights(m):  # as the timed decode steps will run
                try:
                    with torch.inference_mode():
                        prompt = engine.random_prompt(m.config.vocab_size, L, 1, self.device)
                        cache, first = engine.prefill(m, prompt)
                        max_len = L + 2 * steps + 8
                        static = engine.to_static_cache(cache, m.config, max_len)
                        state = engine.make_state(static, first, L, max_len)
                        del cache
                    if self.s.validate_graph:
                        v = engine.validate_graph(m, state, steps=steps)
                        v.pop("graph")
                        ok = v["argmax_match"] and v["max_abs_diff"] <= 0.05 * max(1.0, v["logit_scale"])
                        entry.update(v)
                    else:
                        with torch.inference_mode():  # the state's tensors are inference tensors
                            engine.GraphStep(engine.make_step(m, state))
                        ok = True
                    entry["accepted"] = ok
                except Exception as exc:  # noqa: BLE001 - capture failures fall back to eager, recorded
                    entry.update(accepted=False, error=_err(exc), traceback=traceback.format_exc(limit=8))
                    sync(self.device)
            info.setdefault("validation", {})[role] = entry
            self.log(f"cuda graph check {role}: {({k: v for k, v in entry.items() if k != 'traceback'})}")
            free_memory()
        self.use_graph = all(info["validation"][r]["accepted"] for r in self.roles)
        info["used"] = self.use_graph

    def decode(self, role: str, L: int, e: dict, holder: dict) -> None:
        """Batch-1 decode after a prefill of L tokens, on a static cache: eager always, and through a CUDA graph when
        enabled and validated. ``decode_tok_s`` is the graph number when both models have one, else eager."""
        s, m = self.s, self.models[role]
        n, warm = s.decode_tokens, s.decode_warmup_tokens
        per_mode = warm + n * s.repeats
        max_len = L + 1 + 2 * per_mode + 2 + 16  # eager run + graph warm-up (2) + graph run, with margin
        dynamic = s.decode_cache == "dynamic"
        with torch.inference_mode():
            if dynamic:  # HF's default: DynamicCache growing by torch.cat, masks built by the model; eager only
                static = holder.pop("cache")
                state = engine.make_state(static, holder.pop("next"), L, 1)
                eager = engine.make_step(m, state, explicit_mask=False)
            else:
                static = engine.to_static_cache(holder.pop("cache"), m.config, max_len)
                if self.device.type == "cuda":
                    gc.collect()
                state = engine.make_state(static, holder.pop("next"), L, max_len)
                eager = engine.make_step(m, state)
            modes = [("eager", eager)]
            if self.use_graph and not dynamic:
                modes.append(("cuda_graph", None))
            for mode, step in modes:
                if step is None:
                    try:
                        step = engine.GraphStep(eager)
                    except Exception as exc:  # noqa: BLE001
                        e.setdefault("errors", {})["decode_cuda_graph"] = _err(exc)
                        self.log(f"  cuda graph capture failed at {L}: {_err(exc)}")
                        sync(self.device)
                        break
                for _ in range(warm):
                    step()

                def run() -> None:
                    for _ in range(n):
                        step()

                t = measure(run, self.device, warmup=0, repeats=s.repeats, budget_s=None)
                key = "decode_tok_s_graph" if mode == "cuda_graph" else "decode_tok_s_eager"
                e[key] = n / (t.median_ms / 1e3)
                e[key.replace("tok_s", "ms_all")] = t.all_ms
                self.log(f"  decode {mode}: {e[key]:.1f} tok/s ({t.median_ms / n:.3f} ms/token)")
                del step
        e["decode_tokens"] = n
        e["decode_cache"] = s.decode_cache
        mode = "cuda_graph" if "decode_tok_s_graph" in e else "eager"
        e["decode_mode"] = mode
        e["decode_tok_s"] = e["decode_tok_s_graph" if mode == "cuda_graph" else "decode_tok_s_eager"]
        e["decode_ms_per_token"] = 1e3 / e["decode_tok_s"]
        del state, eager, static, modes
        free_memory()

    def profile(self, role: str, L: int) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        res = profile_model(self.models[role], role, L, self.device, self.out_dir / "profiles.txt",
                            self.s.profile_decode_steps)
        self.log(f"  prefill ms by part: {res['prefill_ms_by_part']}")
        self.log(f"  decode ms/token by part: {res['decode_ms_by_part']}")
        free_memory()
        return res


#: the files a benchmark writes (or, for the profiles, deletes) in ``--out``
BENCH_FILES = ("bench_*.json", "fig2_*.png", "fig5_*.png", "profiles.txt")


def run_benchmark(settings: BenchSettings, log_sink: Callable[[str], None] | None = None, plots: bool = True,
                  table: bool = True) -> dict:
    """Every measurement, then plots and table, with ``settings.out`` locked for the run (:mod:`gendistill.runlock`):
    a folder another gendistill process is writing is one line; a failure before any write leaves no new folder. A
    ``settings.compare`` that is not a bench JSON is one line before anything is measured (:func:`load_baseline`)."""
    baseline = load_baseline(settings.compare) if settings.compare else None  # read before the run may overwrite it
    check_report_folder(settings.out, BENCH_FILES, "--out")
    lock = acquire(settings.out, "--out")
    finished = False
    try:
        claim_report_folder(settings.out, BENCH_FILES, "--out")  # again under the lock; then the folder is ours
        results = _measure_and_report(settings, log_sink, plots, table, baseline)
        finished = True
    finally:
        lock.release(remove_created=not finished)
    return results


def _measure_and_report(settings: BenchSettings, log_sink: Callable[[str], None] | None, plots: bool,
                        table: bool, baseline: dict | None) -> dict:
    runner = Runner(settings, log_sink)
    threads = torch.get_num_threads()
    if settings.config == "tiny" and runner.device.type == "cpu":
        # tiny shapes gain nothing from intra-op threads; on a shared CPU, spinning OpenMP threads make them ~10x slower
        torch.set_num_threads(1)
    try:
        results = runner.run()
    finally:
        torch.set_num_threads(threads)
    if plots:
        try:
            results["plots"] = make_plots(results, runner.out_dir)
            runner.save()
        except Exception as exc:  # noqa: BLE001 - plots are a convenience; the JSON is the record
            runner.log(f"plots failed: {_err(exc)}")
    if table:
        if baseline is not None:
            try:
                print_comparison(results, baseline)
            except Exception as exc:  # noqa: BLE001 - a baseline with odd values must not lose the table
                runner.log(f"comparison with {settings.compare} failed: {_err(exc)}")
        print_table(results)
    results["json_path"] = str(runner.json_path)
    return results
