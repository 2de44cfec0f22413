"""GPU checks (skipped without CUDA) of the training step's fast paths against their references, on fresh random
inputs: fla's fused linear-KL loss vs the chunked loss, FlashAttention over packed documents (varlen) vs SDPA with
transformers' packed-sequence mask, and one whole stage-3 step with every fast path vs the same step on the
reference paths.

Tolerances (relative L2 error against the reference): in bf16 both paths round logits / attention scores to 8
mantissa bits but in different orders, so values agree to ~1e-3 and gradients (a difference of two softmaxes, then a
matmul in bf16) to ~1e-2; we allow 1e-4 on a loss (a sum over 10^5 terms averages the rounding out), 2e-2 on
gradients. In fp32 the projections run in TF32 on both paths: 1e-3.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)")]

from gendistill.distill.config import LossConfig  # noqa: E402
from gendistill.distill.losses import chunked_logit_loss, logit_loss  # noqa: E402


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("train_head", [False, True])
@pytest.mark.parametrize("ce_weight", [0.0, 0.3])
def test_fused_forward_kl_equals_chunked(dtype, temperature, train_head, ce_weight):
    """fla's fused linear-KL (and, with ce_weight, its fused linear cross-entropy: rows without a target left out)
    against the chunked reference: the loss to 1e-4 relative (both sum in fp32), the gradients to the compute dtype's
    rounding of the logits' gradient (bf16 2e-2, fp32 1e-3: tf32 products)."""
    g = torch.Generator(device="cuda").manual_seed(int(temperature * 10) + train_head)
    N, D, V = 3000, 192, 5000  # V not a power of two; N not a multiple of fla's chunking
    h_s = torch.randn(N, D, device="cuda", generator=g)
    w_s = torch.randn(V, D, device="cuda", generator=g) * 0.05
    h_t = (h_s + 0.5 * torch.randn(N, D, device="cuda", generator=g)).to(dtype)
    w_t = (w_s + 0.02 * torch.randn(V, D, device="cuda", generator=g)).to(dtype)
    labels = torch.randint(0, V, (N,), device="cuda", generator=g)
    labels[::7] = -100  # positions without a next token (the CE leaves them out)
    out = {}
    for impl in ("chunked", "fused"):
        hs = h_s.clone().requires_grad_()
        ws = w_s.clone().requires_grad_(train_head)
        cfg = LossConfig(temperature=temperature, ce_weight=ce_weight, chunk_size=1024, implementation=impl)
        loss = logit_loss(hs, ws, h_t, w_t, labels, cfg, compute_dtype=dtype)
        (loss * 0.37).backward()
        out[impl] = (loss.detach(), hs.grad, ws.grad)
    (lc, ghc, gwc), (lf, ghf, gwf) = out["chunked"], out["fused"]
    grad_tol = 2e-2 if dtype == torch.bfloat16 else 1e-3
    assert rel(lf, lc) < 1e-4
    assert rel(ghf, ghc) < grad_tol
    if train_head:
        assert rel(gwf, gwc) < grad_tol
    else:
        assert gwf is None and gwc is None


def test_fused_forward_kl_of_identical_models_is_zero():
    g = torch.Generator(device="cuda").manual_seed(7)
    h = torch.randn(500, 64, device="cuda", generator=g)
    w = torch.randn(1000, 64, device="cuda", generator=g) * 0.1
    y = torch.zeros(500, dtype=torch.long, device="cuda")
    fused = logit_loss(h, w, h, w, y, LossConfig(implementation="fused"), compute_dtype=torch.bfloat16)
    chunked = chunked_logit_loss(h, w, h, w, y, LossConfig(), compute_dtype=torch.bfloat16)
    assert abs(float(fused)) < 1e-3 and abs(float(chunked)) < 1e-3  # summed over 500 rows


def _pair(seed=0, layers=4):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from gendistill.convert import convert_teacher

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, vocab_size=1000, tie_word_embeddings=True)
    cfg._attn_implementation = "sdpa"
    teacher = AutoModelForCausalLM.from_config(cfg).cuda()
    student = convert_teacher(teacher, [0, 2]).cuda().float()
    student.upcast_recurrence_parameters()
    return teacher.to(torch.bfloat16).eval().requires_grad_(False), student.train()


def _packed_batch(B=3, T=512, seed=1):
    from gendistill.distill.stages import StageModule  # noqa: F401  (the batch layout the stages read)

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (B, T), generator=g)
    lens = [[200, 1, 311], [512], [100, 100, 100, 212]][:B]
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lens])
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, -1] = False
    return {"input_ids": ids, "position_ids": pos, "loss_mask": mask, "token_mask": mask,
            "labels": torch.where(mask, torch.roll(ids, -1, 1), -100)}


def test_packed_flash_attention_equals_sdpa_with_the_packed_mask():
    from gendistill.models.packed_attention import available, packed_attention_kwargs, packed_flash_attention

    if not available(torch.device("cuda")):
        pytest.skip("this PyTorch has no torch.nn.attention.varlen")
    teacher, student = _pair()
    b = _packed_batch()
    ids, pos = b["input_ids"].cuda(), b["position_ids"].cuda()
    kw = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in packed_attention_kwargs(b["position_ids"]).items()}
    outs = {}
    for name, on in (("sdpa", False), ("flash", True)):
        with packed_flash_attention(teacher, student, enabled=on), torch.autocast("cuda", dtype=torch.bfloat16):
            h_t = teacher.model(input_ids=ids, position_ids=pos, use_cache=False, **kw).last_hidden_state
            h_s = student.model(input_ids=ids, position_ids=pos, use_cache=False, **kw).last_hidden_state
            h_s.float().pow(2).mean().backward()
        outs[name] = (h_t.float(), h_s.float(), student.model.layers[0].self_attn.q_proj.weight.grad.clone())
        student.zero_grad()
    (t0, s0, g0), (t1, s1, g1) = outs["sdpa"], outs["flash"]
    assert rel(t1, t0) < 2e-2 and rel(s1, s0) < 2e-2 and rel(g1, g0) < 2e-2
    assert teacher.config._attn_implementation == "sdpa"  # restored after the block
    # the second document of row 0 does not see the first: changing document 1 leaves it unchanged
    ids2 = ids.clone()
    ids2[0, :200] = torch.randint(3, 1000, (200,), device="cuda")
    with packed_flash_attention(teacher), torch.autocast("cuda", dtype=torch.bfloat16):
        a = teacher.model(input_ids=ids, position_ids=pos, use_cache=False, **kw).last_hidden_state
        c = teacher.model(input_ids=ids2, position_ids=pos, use_cache=False, **kw).last_hidden_state
    assert torch.equal(a[0, 200:], c[0, 200:]) and not torch.equal(a[0, :200], c[0, :200])


@pytest.mark.parametrize(("stage_name", "attention"),
                         [("stage3a", True), ("stage2", True), ("stage1", True), ("stage3a", False)],
                         ids=["stage3a", "stage2", "stage1", "stage3a-eager-attention"])
def test_fast_training_step_equals_reference_step(stage_name, attention):
    """One optimizer step with every fast path (packed FlashAttention, compiled blocks, fused KL) against the same
    step on the reference paths (SDPA with the packed mask, eager blocks, chunked KL), bf16 autocast as the trainer
    runs it: loss and every gradient within bf16 tolerance (2e-2 relative). ``attention``: the attention modules
    compiled whole as well, packed FlashAttention inside the graph (the trainer's default; False: left eager, as
    ``benchmarks/train_throughput.py --variants eager-attention`` times them)."""
    from gendistill.distill.compile import compiled_blocks
    from gendistill.distill.config import RunConfig, StageConfig
    from gendistill.distill.distributed import World
    from gendistill.distill.freezing import apply_trainable
    from gendistill.distill.stages import build_stage_module, cast_mixer_inputs
    from gendistill.distill.trainer import prefetch_step, train_step
    from gendistill.models.packed_attention import packed_flash_attention

    teacher, student = _pair()
    start = {k: v.clone() for k, v in student.state_dict().items()}
    world = World(device=torch.device("cuda"))
    run = RunConfig(output_dir="unused", precision="bf16", tensorboard=False, progress="none")
    hooks = cast_mixer_inputs(student, torch.bfloat16)
    b = _packed_batch()

    class OneBatch:
        def next_step(self):
            return [b], None

    res = {}
    for fast in (False, True):
        student.load_state_dict(start)
        loss_cfg = {"implementation": "auto" if fast else "chunked"} if stage_name.startswith("stage3") else None
        stage = StageConfig(name=stage_name, steps=1, seq_len=512, batch_size=3, optim={"lr": 1.0}, loss=loss_cfg)
        apply_trainable(student, stage.trainable)
        module = build_stage_module(student, teacher, stage)
        trainable = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.SGD(trainable, lr=0.0)  # keeps the gradients readable: zero_grad(set_to_none) below
        opt.zero_grad = lambda set_to_none=True: None
        with packed_flash_attention(student, teacher, enabled=fast), \
                compiled_blocks(student, teacher, enabled=fast, attention=attention):
            micro, _ = prefetch_step(OneBatch(), module, world.device)
            loss, gnorm, _, ok = train_step(module, module, micro, opt, trainable, world, run, None)
        assert ok
        res[fast] = (loss, [p.grad.float().clone() for p in trainable])
        student.zero_grad(set_to_none=True)
    for h in hooks:
        h.remove()
    (l0, g0), (l1, g1) = res[False], res[True]
    assert abs(l1 - l0) <= 2e-2 * abs(l0)
    assert rel(torch.cat([g.flatten() for g in g1]), torch.cat([g.flatten() for g in g0])) < 2e-2


@pytest.mark.parametrize("stage_name", ["stage3a", "stage1"])
def test_host_syncs_of_a_training_step_do_not_grow_with_depth(stage_name):
    """The step's host syncs (``torch.cuda.set_sync_debug_mode``: every read of a device value by the host) are a
    fixed few per step — the trainer's one read of loss and gradient norm, and what fla computes once per batch from
    the packed documents' boundaries (its chunk indices, cached by tensor identity for the next layers) — never one
    per layer: a student with 6 KDA layers syncs as often as one with 2 (same packed batch, fast paths on, one step
    after a warm-up step that compiled and autotuned)."""
    import warnings

    from gendistill.distill.compile import compiled_blocks
    from gendistill.distill.config import RunConfig, StageConfig
    from gendistill.distill.distributed import World
    from gendistill.distill.freezing import apply_trainable
    from gendistill.distill.stages import build_stage_module, cast_mixer_inputs
    from gendistill.distill.trainer import prefetch_step, train_step
    from gendistill.models.packed_attention import packed_flash_attention

    world = World(device=torch.device("cuda"))
    run = RunConfig(output_dir="unused", precision="bf16", tensorboard=False, progress="none")
    b = _packed_batch()

    class OneBatch:
        def next_step(self):
            return [{k: v.clone() for k, v in b.items()}], None  # new tensors each step, as the data thread makes

    syncs = {}
    for layers in (4, 8):  # attention at 0 and 2: 2 and 6 KDA layers
        teacher, student = _pair(layers=layers)
        hooks = cast_mixer_inputs(student, torch.bfloat16)
        stage = StageConfig(name=stage_name, steps=2, seq_len=512, batch_size=3, optim={"lr": 1e-4})
        apply_trainable(student, stage.trainable)
        module = build_stage_module(student, teacher, stage)
        trainable = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=1e-4)
        with packed_flash_attention(student, teacher), compiled_blocks(student, teacher):
            for step in range(2):
                micro, _ = prefetch_step(OneBatch(), module, world.device)
                torch.cuda.synchronize()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        _, _, _, ok = train_step(module, module, micro, opt, trainable, world, run, None)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                assert ok
        syncs[layers] = [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message)]
        for h in hooks:
            h.remove()
    print(f"host syncs in one {stage_name} step: {len(syncs[4])} (2 KDA layers), {len(syncs[8])} (6 KDA layers)")
    assert len(syncs[8]) == len(syncs[4]), syncs
    assert len(syncs[4]) <= 8, syncs[4]


def test_resume_with_compiled_blocks_continues_the_straight_run(tmp_path):
    """``run.compile: on`` on CUDA (the default there): a run cut after 4 of 6 steps and resumed ends where the
    straight run ends. The student's attention layers use dropout 0.1, drawn from the CUDA generator, so a resume that
    did not restore the CUDA RNG state would draw other masks, and the warm-up + cosine schedule would show a resume
    that restarted it. The teacher (eval mode) runs packed FlashAttention, the student SDPA. Same kernels, same
    inputs, same order: the two runs agree to the last bit but for fla's backward, whose atomic adds may sum in
    another order — bounded by 1e-5 relative on every parameter after six steps of lr 1e-3 (a different dropout mask
    moves parameters by ~1e-3, over 1e-2 relative)."""
    from tests.distill._distill_helpers import _train_tokenizer, text_records, tiny_llama, write_jsonl

    from gendistill.distill.config import parse_recipe
    from gendistill.distill.pipeline import run_recipe

    tok = _train_tokenizer()
    teacher = tiny_llama(len(tok), hidden=64).cuda()
    teacher.config.attention_dropout = 0.1  # inherited by the student's attention layers
    text = write_jsonl(tmp_path / "text.jsonl", text_records(80))

    def recipe(folder):
        return parse_recipe({
            "teacher": {"spec": "unused"}, "student": {"attention_layers": [0, 2]},
            "data": {"sources": [{"path": str(text), "format": "text"}], "heldout_documents": 8},
            "stages": [{"name": "stage3a", "steps": 6, "seq_len": 64, "batch_size": 4, "micro_batch_size": 2,
                        "eval_every": 6, "eval_sequences": 4,
                        "optim": {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 2}}],
            "run": {"output_dir": str(tmp_path / folder), "checkpoint_every": 2, "progress": "none",
                    "tensorboard": False, "device": "cuda", "compile": "on"}})

    straight = run_recipe(recipe("a"), teacher=teacher, tokenizer=tok)
    first = run_recipe(recipe("b"), teacher=teacher, tokenizer=tok, stop_after=4)
    torch.manual_seed(12345)
    torch.cuda.manual_seed_all(12345)  # whatever the process did in between must not matter
    second = run_recipe(recipe("b"), teacher=teacher, tokenizer=tok, resume=True)
    assert first.results["stage3a"].steps == 4 and second.results["stage3a"].resumed_from == 4
    ref = dict(straight.student.named_parameters())
    worst = max(rel(p.detach(), ref[n].detach()) for n, p in second.student.named_parameters())
    assert worst < 1e-5, worst
    assert second.student.model.layers[0].self_attn.attention_dropout == 0.1
    losses = first.results["stage3a"].losses + second.results["stage3a"].losses
    assert losses == pytest.approx(straight.results["stage3a"].losses, rel=1e-5)
