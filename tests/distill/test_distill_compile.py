"""The trainer's compiled blocks (``torch.compile`` of every decoder layer's norms and MLP, teacher and student) give
the step the eager blocks give, share one compiled graph per module class, and leave plain modules behind."""

from __future__ import annotations

import pytest
import torch

from gendistill.convert import convert_teacher
from gendistill.distill.compile import PARTS, block_part, compiled_blocks
from gendistill.distill.config import LossConfig, RunConfig, StageConfig
from gendistill.distill.distributed import World
from gendistill.distill.freezing import apply_trainable
from gendistill.distill.stages import build_stage_module
from gendistill.distill.trainer import train_step
from tests.conftest import make_teacher


def _step(student, teacher, batch, precision="fp32"):
    stage = StageConfig(name="stage3a", steps=1, seq_len=16, batch_size=2, micro_batch_size=2, optim={"lr": 1.0},
                        loss=LossConfig(chunk_size=7))
    apply_trainable(student, stage.trainable)
    module = build_stage_module(student, teacher, stage)
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=1.0)
    run = RunConfig(output_dir="unused", precision=precision, tensorboard=False, progress="none")
    loss, gnorm, _, ok = train_step(module, module, [module.prepare(batch)], opt, trainable, World(), run, None)
    assert ok
    return loss, gnorm, [p.detach().clone() for p in trainable]


def assert_same_step(compiled, eager) -> None:
    """Loss, gradient norm and updated parameters of two fp32 steps equal to float32 rounding (1e-5 relative)."""
    assert abs(compiled[0] - eager[0]) <= 1e-5 * abs(eager[0])
    assert abs(compiled[1] - eager[1]) <= 1e-5 * abs(eager[1])
    for a, b in zip(compiled[2], eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def eager_step_then_reset(family: str, seed: int):
    """A teacher of ``family``, its student, a packed batch and the eager fp32 step on them; the student is put back
    to its start and Dynamo's state cleared, ready for the compiled step."""
    teacher = make_teacher(family)
    student = convert_teacher(teacher, [0, 2]).train()
    batch = _batch(teacher.config.vocab_size, seed, [[10, 6], [16]])
    start = {k: v.clone() for k, v in student.state_dict().items()}
    eager = _step(student, teacher, batch)
    student.load_state_dict(start)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    return teacher, student, batch, eager


def test_compiled_step_equals_eager_step(teacher, student):
    """fp32 on CPU: inductor fuses the RMSNorm reduction and the SwiGLU product but computes the same function;
    its reduction order differs from eager's, so values agree to float32 rounding (1e-5 relative), not bit for bit."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, teacher.config.vocab_size, (2, 16), generator=g)
    pos = torch.tensor([list(range(9)) + list(range(7)), list(range(16))])  # packed documents in row 0
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, -1] = False
    batch = {"input_ids": ids, "position_ids": pos, "loss_mask": mask, "token_mask": mask,
             "labels": torch.where(mask, torch.roll(ids, -1, 1), -100)}
    start = {k: v.clone() for k, v in student.state_dict().items()}
    eager = _step(student, teacher, batch)
    student.load_state_dict(start)
    torch._dynamo.reset()
    L = teacher.config.num_hidden_layers
    with compiled_blocks(student, teacher, attention=False) as n:  # (attention compiled too: the test further down)
        # teacher: both norms and the MLP of each layer; student: the first norm and feed_forward (second norm, MLP
        # and both residual adds in one graph); each model's final norm
        assert n == (3 * L + 1) + (2 * L + 1)
        assert all("feed_forward" in vars(layer) and "forward" not in vars(layer.mlp) for layer in student.model.layers)
        compiled = _step(student, teacher, batch)
        frames = torch._dynamo.utils.counters["frames"]["ok"]
    assert_same_step(compiled, eager)
    # one graph per module class and grad mode (RMSNorm, MLP; teacher without, student with grad): not one per layer
    assert 0 < frames <= 8, frames


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def test_first_norm_returns_bf16_under_autocast_and_the_step_stays_as_accurate(teacher, student):
    """Under bf16 autocast (the trainer's GPU precision; CPU autocast here) each block's compiled first norm returns
    bf16, cast inside its kernel: exactly the fp32 norm's output rounded once, which every projection would otherwise
    round again apart. No other compiled part changes its dtype (the final norm, the teacher's second norm stay fp32).
    So the forward, and the loss, are those of the same compiled step without the cast (``cast=False``); only the
    backward differs, where an attention layer's projections now sum their input gradients in bf16. Against the
    same step in fp32 (the reference) the update is as accurate as the eager bf16 step's: within 1.5x its error plus
    1e-3, where the error of a bf16 step is itself a few 1e-2 (8 mantissa bits, rounded again in each layer)."""
    batch = _batch(teacher.config.vocab_size, 4, [[9, 7], [16]])
    start = {k: v.clone() for k, v in student.state_dict().items()}
    p0 = [p.detach().clone() for p in student.parameters()]
    probes = {"first norm": student.model.layers[1].input_layernorm, "final norm": student.model.norm,
              "teacher's first norm": teacher.model.layers[1].input_layernorm,
              "teacher's second norm": teacher.model.layers[1].post_attention_layernorm}
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out.detach().clone()))
             for name, m in probes.items()]

    def update(precision):
        student.load_state_dict(start)
        loss, _, params = _step(student, teacher, batch, precision)
        trainable = [p0[i] for i, p in enumerate(student.parameters()) if p.requires_grad]
        return loss, torch.cat([(a - b).flatten() for a, b in zip(params, trainable)])

    _, reference = update("fp32")
    _, eager = update("bf16")
    assert {name: out.dtype for name, out in seen.items()} == dict.fromkeys(probes, torch.float32)
    torch._dynamo.reset()
    with compiled_blocks(student, teacher, cast=False, attention=False):
        loss_uncast, uncast = update("bf16")
    fp32_norm = seen["first norm"]
    with compiled_blocks(student, teacher, attention=False):
        loss_cast, compiled = update("bf16")
    for h in hooks:
        h.remove()
    assert {name: out.dtype for name, out in seen.items()} == {
        "first norm": torch.bfloat16, "final norm": torch.float32, "teacher's first norm": torch.bfloat16,
        "teacher's second norm": torch.float32}
    assert torch.equal(seen["first norm"], fp32_norm.to(torch.bfloat16))
    assert loss_cast == loss_uncast
    assert 0 < _rel(compiled, uncast) < 1e-2  # the bf16 sums of the attention layers' input gradients
    err_eager, err_compiled = _rel(eager, reference), _rel(compiled, reference)
    assert 0 < err_eager < 5e-2, err_eager
    assert err_compiled <= 1.5 * err_eager + 1e-3, (err_compiled, err_eager)


def _batch(vocab: int, seed: int, lens: list[list[int]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = sum(lens[0])
    ids = torch.randint(3, vocab, (len(lens), T), generator=g)
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lens])
    mask = torch.ones(len(lens), T, dtype=torch.bool)
    mask[:, -1] = False
    return {"input_ids": ids, "position_ids": pos, "loss_mask": mask, "token_mask": mask,
            "labels": torch.where(mask, torch.roll(ids, -1, 1), -100)}


def test_compiled_step_equals_eager_step_with_per_head_qk_norms():
    """Qwen3's attention normalises every query and key head (``q_norm``/``k_norm`` on ``[B, T, H, d_head]``): those
    norms are compiled too, in the teacher's attention layers and in the student's kept ones, and the step is the
    eager step's to float32 rounding. The RMSNorm class then serves in more variants than Dynamo's default limit of 8
    compiled versions (two ranks, with and without gradients, evaluation, a stage training other parameters): none
    may fall back to eager."""
    teacher, student, batch, eager = eager_step_then_reset("qwen3", 1)
    L = teacher.config.num_hidden_layers
    q_norm = student.model.layers[2].self_attn.q_norm
    with compiled_blocks(student, teacher, attention=False) as n:  # attention eager: its q/k norms compiled apart
        # norms and MLP of every layer and the final norm, both models; q/k norms: all teacher layers, 2 student ones
        assert n == (3 * L + 1) + (2 * L + 1) + 2 * (L + 2)
        assert "forward" in vars(q_norm)
        compiled = _step(student, teacher, batch)

        def evaluate(lens):
            with torch.no_grad():
                student.eval()
                b = _batch(teacher.config.vocab_size, 3, lens)
                student(input_ids=b["input_ids"], position_ids=b["position_ids"])
                student.train()

        evaluate([[24]])  # held-out evaluation, then a stage that trains every parameter, on other shapes
        for p in student.parameters():
            p.requires_grad_(True)
        _step(student, teacher, _batch(teacher.config.vocab_size, 2, [[5, 11], [16], [16]]))
        evaluate([[40]] * 3)
        _step(student, teacher, batch)
    assert "forward" not in vars(q_norm)
    assert_same_step(compiled, eager)
    assert not [k for k in torch._dynamo.utils.counters["unimplemented"] if "recompile" in k.lower()]
    assert torch._dynamo.config.recompile_limit == 8  # raised only inside the block


def test_compiled_blocks_are_removed_after_the_block(teacher):
    layer = teacher.model.layers[0]
    parts = {path: block_part(layer, path) for path in PARTS if block_part(layer, path) is not None}
    assert set(parts) == {"input_layernorm", "post_attention_layernorm", "mlp"}  # Llama: no per-head q/k norms
    plain = {path: m.forward for path, m in parts.items()}
    with compiled_blocks(teacher):
        assert all("forward" in vars(m) for m in parts.values()) and "forward" in vars(layer.self_attn)
    assert all("forward" not in vars(m) for m in parts.values()) and "forward" not in vars(layer.self_attn)
    assert {path: m.forward for path, m in parts.items()} == plain
    with compiled_blocks(teacher, enabled=False) as n:
        assert n == 0 and "forward" not in vars(layer.mlp)


def test_student_feed_forward_is_compiled_as_one_graph_and_removed_after(student):
    """The hybrid's blocks compile ``feed_forward`` (second norm, MLP, both residual adds) instead of the norm and the
    MLP apart, and the layer is a plain module again after the block."""
    layer = student.model.layers[1]
    plain = layer.feed_forward
    with compiled_blocks(student):
        assert "feed_forward" in vars(layer) and "forward" in vars(layer.input_layernorm)
        assert "forward" not in vars(layer.mlp) and "forward" not in vars(layer.post_attention_layernorm)
    assert "feed_forward" not in vars(layer) and "forward" not in vars(layer.input_layernorm)
    assert layer.feed_forward == plain


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_compiled_attention_step_equals_eager_step(family):
    """``compiled_blocks`` (as the trainer enters it: attention compiled by default, measured 1.10-1.12x on an H100)
    compiles each attention module whole, teacher's and student's, with Qwen3's per-head q/k norms inside it rather
    than compiled apart: the step is the eager step's to float32 rounding, without a graph break, the held-out
    evaluation inside the same block (other shapes) recompiles without falling back to eager, and the modules are
    plain after the block."""
    teacher, student, batch, eager = eager_step_then_reset(family, 5)
    attn = student.model.layers[2].self_attn
    L = teacher.config.num_hidden_layers
    with compiled_blocks(student, teacher) as n:
        # teacher: both norms, the MLP and the attention of every layer; student: the first norm and feed_forward of
        # every layer, the attention of its two kept layers; each model's final norm
        assert n == (4 * L + 1) + (2 * L + 1) + 2
        assert "forward" in vars(attn) and "forward" not in vars(getattr(attn, "q_norm", attn.o_proj))
        compiled = _step(student, teacher, batch)
        with torch.no_grad():  # the trainer's held-out evaluation inside the same block, on other shapes
            student.eval()
            b = _batch(teacher.config.vocab_size, 3, [[24]] * 2)
            out = student(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits
            student.train()
    assert "forward" not in vars(attn)
    with torch.no_grad():
        student.eval()
        assert torch.allclose(out, student(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits,
                              rtol=1e-4, atol=1e-5)
        student.train()
    assert not [k for k in torch._dynamo.utils.counters["unimplemented"] if "recompile" in k.lower()]
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert_same_step(compiled, eager)
