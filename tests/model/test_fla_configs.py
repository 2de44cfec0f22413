"""fla kernel configurations shipped with gendistill (no minutes of autotuning on a fresh GPU): the files we write are
read back by fla's own lookup, kernels wrapped in ``triton.heuristics`` are found, and the shipped H200 set covers the
kernels of a training step."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

triton = pytest.importorskip("triton")
cache = pytest.importorskip("fla.ops.utils.cache")

from gendistill.ops import fla_configs  # noqa: E402

LOG = """\
Autotuning kernel chunk_kda_bwd_kernel_dAv with config num_warps: 2, num_ctas: 1, num_stages: 2, maxnreg: None
Triton autotuning for function chunk_kda_bwd_kernel_dAv,
with key as (9, 9, 64, 64, 64, 64, 64, 'torch.bfloat16', 'torch.bfloat16', 'torch.float32', 'torch.int32', 'torch.int32'),
finished after 5.25s,
best config selected: num_warps: 4, num_ctas: 1, num_stages: 3, maxnreg: None;
first optimizer step done 258.6 s after process start
Triton autotuning for function chunk_kda_bwd_kernel_wy_dqkg_fused,
with key as (64, 9, False, 64, 64, 'torch.bfloat16', 'torch.float32', 'torch.int32'),
finished after 88.64s,
best config selected: BK: 64, BV: 64, num_warps: 4, num_ctas: 1, num_stages: 4, maxnreg: None;
"""

# the KDA training step's autotuned kernels (forward and backward of chunk_kda with in-kernel gate, fla's conv and
# gated norm): the shipped H200 set must cover every one of them, or a fresh H200 autotunes for minutes
STEP_KERNELS = {
    "causal_conv1d_fwd_kernel", "causal_conv1d_bwd_kernel", "kda_gate_chunk_cumsum_vector_kernel",
    "chunk_kda_fwd_kernel_intra_token_parallel", "chunk_kda_fwd_kernel_inter_solve_fused",
    "recompute_w_u_fwd_kda_kernel", "chunk_gated_delta_rule_fwd_kernel_h_blockdim64", "chunk_gla_fwd_kernel_o",
    "layer_norm_gated_fwd_kernel", "layer_norm_gated_bwd_kernel", "chunk_kda_bwd_kernel_dAv",
    "chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64", "chunk_kda_bwd_kernel_wy_dqkg_fused",
    "chunk_kda_bwd_kernel_intra", "chunk_local_cumsum_vector_kernel", "kda_gate_bwd_kernel",
    "l2norm_fwd_kernel", "l2norm_bwd_kernel",
}


def _lookup(folder, kernel, key, fuzzy=False):
    f = cache.KernelConfigFile.from_file(folder / f"{kernel}.json")
    assert f is not None, f"fla cannot read {kernel}.json"
    k = cache.AutotuneKey(autotune_key=tuple(key))
    entry = f.lookup_fuzzy(k) if fuzzy else f.lookup_exact(k)
    return None if entry is None else entry["config"]


def test_log_records_become_files_fla_reads(tmp_path):
    entries = fla_configs.parse_autotune_log(LOG)
    assert [e[0] for e in entries] == ["chunk_kda_bwd_kernel_dAv", "chunk_kda_bwd_kernel_wy_dqkg_fused"]
    counts = fla_configs.write_config_files(entries, tmp_path, "3.6.0")
    assert counts == {"chunk_kda_bwd_kernel_dAv": 1, "chunk_kda_bwd_kernel_wy_dqkg_fused": 1}
    key = (64, 9, False, 64, 64, "torch.bfloat16", "torch.float32", "torch.int32")
    cfg = _lookup(tmp_path, "chunk_kda_bwd_kernel_wy_dqkg_fused", key)
    assert cfg == {"kwargs": {"BK": 64, "BV": 64}, "num_warps": 4, "num_stages": 4, "num_ctas": 1, "maxnreg": None}
    # fuzzy: another length / head count of the same structure finds it; another dtype does not
    assert _lookup(tmp_path, "chunk_kda_bwd_kernel_wy_dqkg_fused", (64, 16, False, 128, 128, *key[5:]), True) == cfg
    assert _lookup(tmp_path, "chunk_kda_bwd_kernel_wy_dqkg_fused",
                   (64, 9, False, 64, 64, "torch.float32", "torch.float32", "torch.int32"), True) is None
    # a second write merges keys instead of replacing the file
    fla_configs.write_config_files([("chunk_kda_bwd_kernel_dAv", (1, 2, "torch.float32"), cfg)], tmp_path, "3.6.0")
    doc = json.loads((tmp_path / "chunk_kda_bwd_kernel_dAv.json").read_text())
    assert len(doc["autotune_entries"]) == 2 and doc["triton_version"] == "3.6.0"
    # keep_existing: a key already there keeps its configuration (another log's tuning adds, never replaces);
    # without it the later record wins (read from the file: fla caches a file it has read once)
    def saved(k):
        doc = json.loads((tmp_path / "chunk_kda_bwd_kernel_wy_dqkg_fused.json").read_text())
        return next((e["config"] for e in doc["autotune_entries"].values() if tuple(e["autotune_key"]) == k), None)

    other = {**cfg, "num_warps": 8}
    fla_configs.write_config_files([("chunk_kda_bwd_kernel_wy_dqkg_fused", key, other),
                                    ("chunk_kda_bwd_kernel_wy_dqkg_fused", (1, *key[1:]), other)], tmp_path, "3.6.0",
                                   keep_existing=True)
    assert saved(key) == cfg and saved((1, *key[1:])) == other
    fla_configs.write_config_files([("chunk_kda_bwd_kernel_wy_dqkg_fused", key, other)], tmp_path, "3.6.0")
    assert saved(key) == other


def test_dump_finds_autotuners_wrapped_in_heuristics(tmp_path, monkeypatch):
    def kernel(x, N, BK: triton.language.constexpr):  # never launched
        pass

    tuned = triton.autotune(configs=[triton.Config({"BK": 32}, num_warps=2), triton.Config({"BK": 64}, num_warps=4)],
                            key=["N"])(triton.jit(kernel))
    wrapped = triton.heuristics({"X": lambda args: 1})(tuned)
    tuned.cache[(128, "torch.bfloat16")] = tuned.configs[1]  # what a run's autotuning leaves behind
    module = types.ModuleType("fla._gendistill_test_kernels")
    module.wrapped_kernel = wrapped
    monkeypatch.setitem(sys.modules, module.__name__, module)
    counts = fla_configs.dump_autotuned(tmp_path)
    assert counts.get("kernel") == 1
    assert _lookup(tmp_path, "kernel", (128, "torch.bfloat16"))["kwargs"] == {"BK": 64}


def test_shipped_h200_configs_cover_the_training_step():
    folder = fla_configs.SHIPPED / fla_configs.gpu_dir_name("NVIDIA H200")
    shipped = {p.stem for p in folder.glob("*.json")}
    assert STEP_KERNELS <= shipped, f"missing: {sorted(STEP_KERNELS - shipped)}"
    for name in shipped:
        f = cache.KernelConfigFile.from_file(folder / f"{name}.json")
        assert f is not None and f.autotune_entries, name
        for entry in f.autotune_entries.values():  # every entry is reachable under its own key
            assert _lookup(folder, name, entry["autotune_key"]) == entry["config"]


# keys real runs autotuned on a fresh card, recovered from their leases' logs (tools/fla_configs_from_log.py) and
# shipped: one of each kernel the SmolLM2 student's first evaluation autotuned on a fresh H100 (bf16 weights, forward
# only; 22 keys, 145 s of a 179 s evaluation: docs/results.md section 15)
EVAL_KEYS = [
    ("causal_conv1d_fwd_kernel", (960, 4, "torch.bfloat16", "torch.bfloat16", "torch.bfloat16", "torch.bfloat16")),
    ("kda_gate_chunk_cumsum_vector_kernel",
     (9, 64, 64, False, False, "torch.bfloat16", "torch.float32", "torch.float32", "torch.float32")),
    ("chunk_kda_fwd_kernel_intra_token_parallel", (64, 9, 9, "torch.bfloat16", "torch.bfloat16", "torch.float32",
                                                   "torch.float32", "torch.bfloat16", "torch.float32")),
    ("chunk_kda_fwd_kernel_inter_solve_fused", (9, 9, 64, 64, 16, 4, "torch.bfloat16", "torch.bfloat16",
                                                "torch.float32", "torch.float32", "torch.bfloat16", "torch.float32",
                                                "torch.bfloat16")),
    ("recompute_w_u_fwd_kda_kernel", (9, 9, 64, 64, 64, 64, 64, False, "torch.bfloat16", "torch.bfloat16",
                                      "torch.bfloat16", "torch.float32", "torch.bfloat16", "torch.bfloat16",
                                      "torch.bfloat16", "torch.float32")),
    ("chunk_gated_delta_rule_fwd_kernel_h_blockdim64", (9, 9, 64, 64, 64, False, "torch.bfloat16", "torch.bfloat16",
                                                        "torch.bfloat16", "torch.bfloat16", "torch.float32",
                                                        "torch.bfloat16")),
    ("chunk_gla_fwd_kernel_o", (64, 9, False, 64, 64, "torch.bfloat16", "torch.bfloat16", "torch.float32",
                                "torch.bfloat16", "torch.bfloat16", "torch.bfloat16")),
    ("layer_norm_gated_fwd_kernel", (64, 1, True, False, False, True, "torch.bfloat16", "torch.bfloat16",
                                     "torch.bfloat16", "torch.bfloat16", "torch.float32")),
    ("chunk_local_cumsum_vector_kernel", (1, 9, 64, 64, True, False, "torch.float32", "torch.float32", "torch.int32",
                                          "torch.int32")),
    # select-layers' candidate training (unpacked 8 x 1024 batches) autotuned 7 keys, 167 s, on a fresh H200
    # (docs/results.md section 14's lease), 101 s of it this one: shipped since
    ("chunk_kda_bwd_kernel_wy_dqkg_fused", (64, 9, False, 64, 64, *["torch.bfloat16"] * 4, *["torch.float32"] * 2,
                                            *["torch.bfloat16"] * 4, *["torch.float32"] * 2, *["torch.bfloat16"] * 2,
                                            *["torch.float32"] * 3)),
]


@pytest.mark.parametrize(("kernel", "key"), EVAL_KEYS, ids=[k for k, _ in EVAL_KEYS])
def test_shipped_configs_cover_what_real_runs_autotuned(kernel, key):
    """Under gendistill's exact-key mode a key missing from the shipped files is autotuned on every fresh card: an
    evaluation's keys differ from training's (the gated norm's weight is bf16, not fp32 master weights; other
    kernels run their forward-only variants), and select-layers trains unpacked batches, so they are shipped too."""
    folder = fla_configs.SHIPPED / fla_configs.gpu_dir_name("NVIDIA H200")
    assert _lookup(folder, kernel, key) is not None, f"{kernel}: {key} not shipped"


def _plain_tuner(kernel):
    while not isinstance(kernel, triton.runtime.autotuner.Autotuner):  # under triton.heuristics
        kernel = kernel.fn
    return kernel


def test_plain_autotuners_take_the_shipped_configurations(monkeypatch):
    """The gated RMSNorm's kernels, and the common chunked kernels GLA and Mamba2 run (``chunk_fwd_kernel_h``,
    ``chunk_bwd_kernel_dh``, ``chunk_bwd_kernel_dv``, ``fused_recurrent_fwd_kernel``), use Triton's plain autotuner,
    which never reads fla's files: each shipped key goes into its cache as one of its own candidates, and a launch with
    that key is not benchmarked (a fresh H200 spent 3-5 s on each norm key, an H100 9-46 s on each of the others).
    Kernels of other modules are left alone, even those sharing a shipped kernel's name, and so are fla's own
    file-reading autotuners in the same modules."""
    norm = pytest.importorskip("fla.modules.norm.fused_norm_gate")
    common = {m: pytest.importorskip(m) for m in ("fla.ops.common.chunk_h", "fla.ops.common.chunk_o",
                                                  "fla.ops.common.fused_recurrent")}
    folder = fla_configs.SHIPPED / fla_configs.gpu_dir_name("NVIDIA H200")
    tuners = {name: _plain_tuner(getattr(norm, name)) for name in ("layer_norm_gated_fwd_kernel",
                                                                   "layer_norm_gated_bwd_kernel")}
    tuners.update({name: _plain_tuner(getattr(common[m], name)) for m, name in (
        ("fla.ops.common.chunk_h", "chunk_fwd_kernel_h"), ("fla.ops.common.chunk_h", "chunk_bwd_kernel_dh"),
        ("fla.ops.common.chunk_o", "chunk_bwd_kernel_dv"), ("fla.ops.common.fused_recurrent",
                                                            "fused_recurrent_fwd_kernel"))})
    for t in tuners.values():
        assert type(t) is triton.runtime.autotuner.Autotuner
        monkeypatch.setattr(t, "cache", {})
    others = [t for t in fla_configs._autotuners() if t not in tuners.values()]
    assert any(fla_configs._kernel_name(t) == "fused_recurrent_fwd_kernel" for t in others)  # same name, elsewhere
    assert any(type(t) is not triton.runtime.autotuner.Autotuner for t in others)  # fla's own, e.g. chunk_fwd_kernel_o
    before = [dict(t.cache) for t in others]
    monkeypatch.setenv("GENDISTILL_FLA_CONFIGS", "0")
    assert fla_configs.seed_plain_autotuners(folder) == 0
    monkeypatch.delenv("GENDISTILL_FLA_CONFIGS")
    shipped = {name: json.loads((folder / f"{name}.json").read_text())["autotune_entries"] for name in tuners}
    seeded = fla_configs.seed_plain_autotuners(folder)
    # every shipped key whose configuration is one of the kernel's candidates here (the candidates of a few kernels
    # depend on the device's shared memory: fewer off a GPU)
    matched = {name: [e for e in entries.values() if fla_configs._matching_config(tuners[name], e["config"])]
               for name, entries in shipped.items()}
    assert seeded == sum(len(m) for m in matched.values())
    assert len(matched["layer_norm_gated_fwd_kernel"]) == len(shipped["layer_norm_gated_fwd_kernel"])
    assert all(matched[name] for name in tuners), {name: len(m) for name, m in matched.items()}
    for name, entries in matched.items():
        for entry in entries:
            config = tuners[name].cache[tuple(entry["autotune_key"])]
            assert config in tuners[name].configs  # the autotuner's own candidate
            assert (config.num_warps, config.num_stages, config.kwargs) == (
                entry["config"]["num_warps"], entry["config"]["num_stages"], entry["config"]["kwargs"])
    assert [dict(t.cache) for t in others] == before

    # a launch with a shipped key runs the shipped configuration without benchmarking (meta tensors: no device)
    tuner = tuners["layer_norm_gated_fwd_kernel"]
    launched = []
    monkeypatch.setattr(tuner, "fn", types.SimpleNamespace(run=lambda *a, **kw: launched.append(kw)))
    monkeypatch.setattr(tuner, "_bench", lambda *a, **kw: pytest.fail("benchmarked a shipped key"))
    key, entry = next((tuple(e["autotune_key"]), e) for e in shipped["layer_norm_gated_fwd_kernel"].values()
                      if e["autotune_key"][0] == 128)
    T, D, NB = 4 * 65536 - 5, key[0], key[1]
    meta = lambda *shape, dt=torch.bfloat16: torch.empty(*shape, device="meta", dtype=dt)  # noqa: E731
    norm.layer_norm_gated_fwd_kernel.run(
        grid=lambda m: (1,), warmup=False, x=meta(T, D), g=meta(T, D), y=meta(T, D), w=meta(D, dt=torch.float32),
        b=None, residual=None, residual_out=None, mean=None, rstd=meta(T, dt=torch.float32), eps=1e-6, T=T, D=D,
        BD=D, NB=NB, ACTIVATION="swish", IS_RMS_NORM=True)
    assert tuner.best_config is tuner.cache[key]
    assert launched and launched[0]["num_warps"] == entry["config"]["num_warps"]


def test_the_mode_gendistill_sets_never_hands_a_kernel_another_shapes_configuration(monkeypatch):
    """Under the ``FLA_CACHE_MODE`` that ``activate`` sets, fla's own lookup returns a shipped configuration for
    exactly its key and nothing for another head dimension (Triton then autotunes, skipping what does not fit). The
    key below is the float32 head-dim-128 prefill that stopped with ``OutOfResources`` on an H100 under ``fuzzy``,
    which handed it the head-dim-64 entry: checked here too, so the test fails if fla's modes change meaning."""
    folder = fla_configs.SHIPPED / "NVIDIA_H200"
    kernel = "chunk_gated_delta_rule_fwd_kernel_h_blockdim64"
    entries = json.loads((folder / f"{kernel}.json").read_text())["autotune_entries"].values()
    shipped = next(e for e in entries if e["autotune_key"][2] == 64 and e["autotune_key"][6] == "torch.float32"
                   and len(e["autotune_key"]) == 14)
    wider = list(shipped["autotune_key"])
    wider[2] = wider[3] = 128  # K, V: the Qwen3 head dimension
    assert not any(e["autotune_key"] == wider for e in entries), "an exact head-dim-128 float32 entry was shipped"
    monkeypatch.setenv("FLA_CONFIG_DIR", str(folder))
    cache.load_config_file.cache_clear()

    def lookup(mode, key):
        monkeypatch.setattr(cache, "FLA_CACHE_MODE", cache.FlaCacheMode(mode))
        return cache.load_cached_config(kernel, cache.AutotuneKey(autotune_key=tuple(key)))

    assert lookup(fla_configs.CACHE_MODE, shipped["autotune_key"]) == shipped["config"]
    assert lookup(fla_configs.CACHE_MODE, wider) is None
    assert lookup("fuzzy", wider) is not None  # what fuzzy did: a configuration tuned for another head dimension


def _tuner(module, name):
    mod = pytest.importorskip(module)
    return _plain_tuner(getattr(mod, name))


def test_the_norms_row_buckets_take_the_nearest_tuned_buckets_configuration(monkeypatch):
    """An evaluation's batches reach every row bucket ``NB`` of fla's norm kernels, each a new autotuning key (under
    exact keys: about 20 candidates compiled and timed per new bucket). Every bucket 1..N of a shipped key gets the
    configuration tuned at the nearest shipped bucket, as the autotuner's own candidate; nothing else changes: the
    other key fields (dimension, flags, dtypes), the keys already cached, other kernels."""
    folder = fla_configs.SHIPPED / fla_configs.gpu_dir_name("NVIDIA H200")
    names = [(m, n) for m, ns in fla_configs.ROW_BUCKET_KERNELS.items() for n in ns]
    tuners = {n: _tuner(m, n) for m, n in names}
    for t in tuners.values():
        monkeypatch.setattr(t, "cache", {})
    fwd = tuners["l2norm_fwd_kernel"]
    kept = fwd.configs[0]
    fwd.cache[(64, 5, "torch.bfloat16", "torch.bfloat16", "torch.float32")] = kept  # autotuned in this process
    others = [t for t in fla_configs._autotuners() if t not in tuners.values()]
    before = [dict(t.cache) for t in others]
    monkeypatch.setenv("GENDISTILL_FLA_CONFIGS", "0")
    assert fla_configs.seed_row_buckets(folder, buckets=16) == 0
    monkeypatch.delenv("GENDISTILL_FLA_CONFIGS")
    assert fla_configs.seed_row_buckets(folder, buckets=16) > 0
    assert [dict(t.cache) for t in others] == before
    for name, tuner in tuners.items():
        at = tuner.keys.index("NB")
        shipped = json.loads((folder / f"{name}.json").read_text())["autotune_entries"].values()
        groups: dict[tuple, dict[int, dict]] = {}
        for e in shipped:
            k = e["autotune_key"]
            groups.setdefault(tuple(k[:at] + k[at + 1:]), {})[k[at]] = e["config"]
        for rest, by_nb in groups.items():
            for nb in range(1, 17):
                key = rest[:at] + (nb,) + rest[at:]
                if name == "l2norm_fwd_kernel" and key == (64, 5, "torch.bfloat16", "torch.bfloat16", "torch.float32"):
                    assert tuner.cache[key] is kept  # what this process autotuned stays
                    continue
                want = by_nb[min(by_nb, key=lambda b: (abs(math.log(b / nb)), b))]
                got = tuner.cache[key]
                assert got in tuner.configs, (name, key)
                assert (got.num_warps, got.num_stages, dict(got.kwargs)) == (
                    want["num_warps"], want["num_stages"], want["kwargs"]), (name, key)
        assert all(k[at] <= 16 or k in {tuple(e["autotune_key"]) for e in shipped} for k in tuner.cache), name

    # a launch at a bucket never tuned runs the seeded configuration without benchmarking (meta tensors: no device)
    launched = []
    monkeypatch.setattr(fwd, "fn", types.SimpleNamespace(run=lambda *a, **kw: launched.append(kw), src=fwd.fn.src))
    monkeypatch.setattr(fwd, "_bench", lambda *a, **kw: pytest.fail("benchmarked a seeded bucket"))
    T, D = 3 * 65536 - 7, 64  # rows: bucket 3, never tuned
    meta = lambda *shape, dt=torch.bfloat16: torch.empty(*shape, device="meta", dtype=dt)  # noqa: E731
    l2 = sys.modules["fla.modules.norm.l2norm"]
    l2.l2norm_fwd_kernel.run(grid=lambda m: (1,), warmup=False, x=meta(T, D), y=meta(T, D),
                             rstd=meta(T, dt=torch.float32), eps=1e-6, T=T, D=D, BD=D, NB=3)
    assert fwd.best_config is fwd.cache[(64, 3, "torch.bfloat16", "torch.bfloat16", "torch.float32")]
    assert launched and launched[0]["num_warps"] == fwd.best_config.num_warps

    # the gated norm, launched through its triton.heuristics wrapper, at a bucket never tuned (the shipped D=128
    # keys hold buckets 4 and 8; 5 is nearer 4)
    gate = tuners["layer_norm_gated_fwd_kernel"]
    launched.clear()
    monkeypatch.setattr(gate, "fn", types.SimpleNamespace(run=lambda *a, **kw: launched.append(kw), src=gate.fn.src))
    monkeypatch.setattr(gate, "_bench", lambda *a, **kw: pytest.fail("benchmarked a seeded bucket"))
    norm = sys.modules["fla.modules.norm.fused_norm_gate"]
    T, D = 5 * 65536 - 3, 128
    norm.layer_norm_gated_fwd_kernel.run(
        grid=lambda m: (1,), warmup=False, x=meta(T, D), g=meta(T, D), y=meta(T, D), w=meta(D, dt=torch.float32),
        b=None, residual=None, residual_out=None, mean=None, rstd=meta(T, dt=torch.float32), eps=1e-6, T=T, D=D,
        BD=D, NB=5, ACTIVATION="swish", IS_RMS_NORM=True)
    key5 = next(k for k in gate.cache if k[:2] == (128, 5) and gate.cache[k] is gate.best_config)
    key4 = key5[:1] + (4,) + key5[2:]
    assert launched and key4 in {tuple(e["autotune_key"]) for e in json.loads(
        (folder / "layer_norm_gated_fwd_kernel.json").read_text())["autotune_entries"].values()}
    assert gate.best_config is gate.cache[key5] and launched[0]["num_warps"] == gate.cache[key5].num_warps


def test_a_kernel_that_computes_with_its_bucket_is_never_seeded():
    """Seeding another bucket's configuration is safe only while the kernel's body does not read ``NB``: checked on
    fla's source at run time, so a future fla that computes with it is left to autotune."""
    def fake(src):
        return types.SimpleNamespace(fn=types.SimpleNamespace(src=src))

    assert fla_configs._reads_bucket(fake("def k(x, T, NB: tl.constexpr, BT: tl.constexpr):\n    n = T // NB\n"))
    assert not fla_configs._reads_bucket(fake("def k(x, T, NB: tl.constexpr,\n      BT: tl.constexpr):\n    n = T\n"))
    assert fla_configs._reads_bucket(fake("not python (")) and fla_configs._reads_bucket(fake(None))
    for module, names in fla_configs.ROW_BUCKET_KERNELS.items():
        for name in names:  # today's fla: every listed kernel only keys on its bucket
            assert not fla_configs._reads_bucket(_tuner(module, name)), name


def test_between_two_tuned_buckets_each_bucket_takes_the_nearer_in_ratio(tmp_path, monkeypatch):
    tuner = _tuner("fla.modules.norm.l2norm", "l2norm_fwd_kernel")
    monkeypatch.setattr(tuner, "cache", {})
    small, large = tuner.configs[0], tuner.configs[-1]
    assert (small.num_warps, dict(small.kwargs)) != (large.num_warps, dict(large.kwargs))
    dtypes = ["torch.bfloat16", "torch.bfloat16", "torch.float32"]
    entries = [(name, tuple([64, nb, *dtypes]), fla_configs._config_dict(cfg))
               for name, nb, cfg in (("l2norm_fwd_kernel", 2, small), ("l2norm_fwd_kernel", 16, large))]
    fla_configs.write_config_files(entries, tmp_path, triton.__version__)
    fla_configs.seed_row_buckets(tmp_path, buckets=32)
    chosen = {nb: tuner.cache[(64, nb, *dtypes)] for nb in range(1, 33)}
    # nearer in ratio: 5 is 2.5x from 2 and 3.2x from 16; 6 is 3x from 2 and 2.7x from 16
    assert [nb for nb, c in chosen.items() if c is small] == [1, 2, 3, 4, 5]
    assert all(chosen[nb] is large for nb in range(6, 33))


def test_a_dump_after_seeding_holds_what_was_tuned_not_the_seeded_buckets(tmp_path, monkeypatch):
    """``dump_autotuned`` writes what this process's autotuners chose (for shipping to a new card); the row buckets
    seeded from another card's files were never tuned here and stay out of it."""
    tuner = _tuner("fla.modules.norm.l2norm", "l2norm_fwd_kernel")
    monkeypatch.setattr(tuner, "cache", {})
    tuned_key = (64, 7, "torch.bfloat16", "torch.bfloat16", "torch.float32")
    tuner.cache[tuned_key] = tuner.configs[3]  # autotuned in this process
    shipped = tmp_path / "shipped"
    fla_configs.write_config_files([("l2norm_fwd_kernel", (64, 2, "torch.bfloat16", "torch.bfloat16",
                                                           "torch.float32"), fla_configs._config_dict(tuner.configs[0]))],
                                   shipped, triton.__version__)
    assert fla_configs.seed_row_buckets(shipped, buckets=16) == 15  # every bucket but the autotuned one
    monkeypatch.setattr(fla_configs, "_autotuners", lambda: [tuner])
    fla_configs.dump_autotuned(tmp_path / "dumped")
    dumped = json.loads((tmp_path / "dumped" / "l2norm_fwd_kernel.json").read_text())["autotune_entries"]
    assert [tuple(e["autotune_key"]) for e in dumped.values()] == [tuned_key]


def test_seeding_reads_fla_config_dir_only_while_fla_does(monkeypatch, tmp_path):
    monkeypatch.setenv("FLA_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("FLA_CACHE_MODE", raising=False)
    monkeypatch.delenv("GENDISTILL_FLA_CONFIGS", raising=False)
    assert fla_configs._seed_folder(None) is None  # unset: fla ignores the folder, so does seeding
    assert fla_configs._seed_folder("explicit") == "explicit"
    monkeypatch.setenv("FLA_CACHE_MODE", "strict")
    assert fla_configs._seed_folder(None) == str(tmp_path)
    monkeypatch.setenv("FLA_CACHE_MODE", "disabled")
    assert fla_configs._seed_folder(None) is None and fla_configs._seed_folder("explicit") is None


def test_on_hopper_glas_output_kernel_never_benchmarks_an_8_warp_candidate(monkeypatch):
    """GLA's output kernel (``chunk_gla_fwd_kernel_o``) lists 8-warp candidates in fla 0.6.0; on an H100 one of them
    stopped fla's benchmark with a misaligned address, losing the CUDA context. On compute capability 9.0 (H100, H200)
    they are taken out of its autotuner; on other GPUs, and in every other kernel (many with 8-warp candidates of
    their own), nothing changes. A configuration shipped for a key is still the one fla runs."""
    gla = pytest.importorskip("fla.ops.gla.chunk")
    tuner = _plain_tuner(gla.chunk_gla_fwd_kernel_o)
    tuners = fla_configs._autotuners()
    assert tuner in tuners
    for t in tuners:  # each test sees fla's own lists, and leaves them so
        monkeypatch.setattr(t, "configs", list(t.configs))
    full = list(tuner.configs)
    others = {id(t): list(t.configs) for t in tuners if t is not tuner}
    assert any(c.num_warps == 8 for c in full)
    assert any(c.num_warps == 8 for cs in others.values() for c in cs)  # the test could see a broader prune
    for capability in ((8, 0), (8, 9), (10, 0), (12, 0)):
        assert fla_configs.prune_hopper_candidates(capability) == 0
        assert tuner.configs == full
    assert fla_configs.prune_hopper_candidates((9, 0)) == sum(c.num_warps == 8 for c in full)
    assert tuner.prune_configs({}) == [c for c in full if c.num_warps != 8]  # what fla would benchmark
    assert {id(t): t.configs for t in tuners if t is not tuner} == others
    assert fla_configs.prune_hopper_candidates((9, 0)) == 0
    # the shipped choices fla reads from its files, 8 warps among them, are untouched
    folder = fla_configs.SHIPPED / fla_configs.gpu_dir_name("NVIDIA H200")
    shipped = json.loads((folder / "chunk_gla_fwd_kernel_o.json").read_text())["autotune_entries"]
    eight = [e for e in shipped.values() if e["config"]["num_warps"] == 8]
    assert eight and _lookup(folder, "chunk_gla_fwd_kernel_o", eight[0]["autotune_key"])["num_warps"] == 8
