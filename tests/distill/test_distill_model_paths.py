"""The stage modules against the models themselves: packing isolation (teacher and hybrid student), stage 1's
standalone mixer call and stage 2's block composition equal what the student computes in its own forward, and the
parameter groups used for freezing."""

from __future__ import annotations

import pytest
import torch

from gendistill.distill.config import LossConfig, StageConfig, TrainableConfig
from gendistill.distill.freezing import GROUP_PATTERNS, apply_trainable, no_weight_decay, param_groups
from gendistill.distill.losses import full_logit_loss
from gendistill.distill.stages import Stage2Module, kda_layer_indices, run_mixer
from gendistill.errors import ConfigError
from gendistill.models.packed_attention import IMPLEMENTATION, packed_flash_attention


def _packed(doc1: list[int], doc2: list[int]):
    ids = torch.tensor([doc1 + doc2])
    pos = torch.tensor([list(range(len(doc1))) + list(range(len(doc2)))])
    return ids, pos


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_packing_isolation_outputs_and_losses(which, teacher, student):
    model = (teacher if which == "teacher" else student).eval()
    g = torch.Generator().manual_seed(0)
    d1a = torch.randint(3, 300, (9,), generator=g).tolist()
    d1b = torch.randint(3, 300, (9,), generator=g).tolist()
    d2 = torch.randint(3, 300, (13,), generator=g).tolist()
    with torch.no_grad():
        # use_cache=False as in training: transformers only reads packed documents from position_ids without a cache
        la = model(_packed(d1a, d2)[0], position_ids=_packed(d1a, d2)[1], use_cache=False).logits
        lb = model(_packed(d1b, d2)[0], position_ids=_packed(d1b, d2)[1], use_cache=False).logits
        alone = model(torch.tensor([d2])).logits
        t_alone = teacher(torch.tensor([d2])).logits
    # document 1 differs, so its outputs differ; document 2's are unchanged and equal to running it alone
    assert not torch.allclose(la[0, :9], lb[0, :9])
    torch.testing.assert_close(la[0, 9:], lb[0, 9:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(la[0, 9:], alone[0], rtol=1e-4, atol=1e-4)
    # and so are document 2's per-token distillation losses
    cfg = LossConfig()
    y = torch.tensor(d2[1:] + [0])
    loss_a = full_logit_loss(la[0, 9:], t_alone[0], y, cfg)
    loss_b = full_logit_loss(lb[0, 9:], t_alone[0], y, cfg)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-4, atol=1e-6)


def _hooked_forward(student, ids, pos, layer_idx):
    """Run the student's own forward, recording layer ``layer_idx``'s block input/output and mixer input/output."""
    rec = {}
    layer = student.model.layers[layer_idx]
    hs = [
        layer.register_forward_hook(
            lambda m, a, kw, o: rec.update(block_in=(kw.get("hidden_states", a[0] if a else None)), block_out=o),
            with_kwargs=True,
        ),
        layer.linear_attn.register_forward_hook(lambda m, a, kw, o: rec.update(mix_in=a[0] if a else kw["hidden_states"], mix_out=o), with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            student(ids, position_ids=pos, use_cache=False)
    finally:
        for h in hs:
            h.remove()
    return rec


def test_stage1_mixer_call_and_stage2_block_match_the_student_forward(student, teacher):
    student.eval()
    kda = kda_layer_indices(student)
    assert kda == [1, 3]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 300, (2, 24), generator=g)
    pos = torch.tensor([list(range(10)) + list(range(14)), list(range(5)) + list(range(19))])
    i = kda[0]
    rec = _hooked_forward(student, ids, pos, i)
    block_in = rec["block_in"]
    # stage 1: the mixer on the normed block input, called standalone on [B, T, D] with the packed positions
    with torch.no_grad():
        x = student.model.layers[i].input_layernorm(block_in)
        mix = run_mixer(student.model.layers[i].linear_attn, x, pos)
    torch.testing.assert_close(mix.reshape(-1), rec["mix_out"].reshape(-1), rtol=1e-5, atol=1e-6)
    # stage 2: the block recomposed from its parts
    st = StageConfig(name="stage2", steps=1, seq_len=24, batch_size=2, optim={"lr": 1e-3})
    mod = Stage2Module(student, teacher, st)
    with torch.no_grad():
        out = mod.block(i, block_in, pos)
    torch.testing.assert_close(out, rec["block_out"], rtol=1e-5, atol=1e-6)


def test_run_mixer_isolates_documents(student):
    student.eval()
    mixer = student.model.layers[1].linear_attn
    g = torch.Generator().manual_seed(2)
    a = torch.randn(1, 8, 32, generator=g)
    b = torch.randn(1, 8, 32, generator=g)
    c = torch.randn(1, 6, 32, generator=g)
    pos = torch.tensor([list(range(8)) + list(range(6))])
    with torch.no_grad():
        o1 = run_mixer(mixer, torch.cat([a, c], 1), pos)
        o2 = run_mixer(mixer, torch.cat([b, c], 1), pos)
        o3 = run_mixer(mixer, c, torch.arange(6)[None])
    torch.testing.assert_close(o1[:, 8:], o2[:, 8:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o1[:, 8:], o3, rtol=1e-5, atol=1e-6)


def test_boundaries_passed_by_the_caller_isolate_documents(student):
    """The trainer computes the documents' boundaries on its data thread and passes them to every forward
    (``cu_seq_lens_q``, packed_attention_kwargs); the student's KDA layers and stage 1's mixer call must restart at
    them exactly as when they find the boundaries in position_ids themselves."""
    from gendistill.models.packed_attention import packed_attention_kwargs

    student.eval()
    g = torch.Generator().manual_seed(5)
    d1a, d1b = torch.randint(3, 250, (2, 9), generator=g)
    d2 = torch.randint(3, 250, (7,), generator=g)
    pos = torch.tensor([list(range(9)) + list(range(7)), list(range(16))])
    kw = packed_attention_kwargs(pos)
    second_row = torch.randint(3, 250, (1, 16), generator=g)

    def hidden(d1, **kwargs):
        ids = torch.cat([torch.cat([d1, d2])[None], second_row])
        with torch.no_grad():
            return student.model(input_ids=ids, position_ids=pos, use_cache=False, **kwargs).last_hidden_state

    a, b = hidden(d1a, **kw), hidden(d1b, **kw)
    torch.testing.assert_close(a[0, 9:], b[0, 9:], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[0, :9], b[0, :9])
    torch.testing.assert_close(a, hidden(d1a), rtol=1e-5, atol=1e-6)  # = the boundaries found in position_ids
    mixer = student.model.layers[1].linear_attn
    x = torch.randn(2, 16, mixer.hidden_size, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(run_mixer(mixer, x, pos, kw["cu_seq_lens_q"]), run_mixer(mixer, x, pos),
                                   rtol=1e-5, atol=1e-6)


def test_parameter_groups_on_the_hybrid(student):
    import re

    names = [n for n, _ in student.named_parameters(remove_duplicate=False)]

    def group(g):
        return {n for n in names if re.search(GROUP_PATTERNS[g], n)}

    assert group("kda") and all(".linear_attn." in n for n in group("kda"))
    assert group("kda_new") < group("kda")
    assert not any(re.search(r"linear_attn\.(q|k|v|o)_proj\.", n) for n in group("kda_new"))
    assert "model.layers.1.linear_attn.A_log" in group("kda_new")
    assert all(".self_attn." in n for n in group("attention")) and group("attention")
    norms = group("norms")
    assert "model.norm.weight" in norms and "model.layers.0.input_layernorm.weight" in norms
    assert not any("linear_attn" in n or "self_attn" in n for n in norms)  # o_norm / q_norm belong to their mixer
    assert group("embeddings") == {"model.embed_tokens.weight"}
    assert group("lm_head") == {"lm_head.weight"}  # tied: same tensor as the embeddings


def test_apply_trainable_union_exclude_and_errors(student):
    sel = apply_trainable(student, TrainableConfig(groups=["kda", "mlp"], exclude=[r"layers\.3\."]))
    train = set(sel.trainable)
    assert any("layers.1.linear_attn" in n for n in train) and not any("layers.3." in n for n in train)
    assert all(p.requires_grad == (n in train) for n, p in student.named_parameters())
    with pytest.raises(ConfigError, match=r"where\.include\[0\] \('nomatch'\): matches no parameter"):
        apply_trainable(student, TrainableConfig(groups=["mlp"], include=["nomatch"]), "where")
    with pytest.raises(ConfigError, match="selects no parameter"):
        apply_trainable(student, TrainableConfig(groups=["mlp"], exclude=["mlp"]), "w")


def test_no_weight_decay_on_gates_norms_and_biases(student):
    apply_trainable(student, TrainableConfig(groups=["kda", "norms", "mlp"]))
    named = dict(student.named_parameters())
    for n in ("model.layers.1.linear_attn.A_log", "model.layers.1.linear_attn.dt_bias",
              "model.layers.1.linear_attn.o_norm.weight", "model.norm.weight", "model.layers.1.linear_attn.g_proj.1.bias"):
        assert no_weight_decay(n, named[n]), n
    assert not no_weight_decay("model.layers.1.mlp.up_proj.weight", named["model.layers.1.mlp.up_proj.weight"])
    groups = param_groups(student, 0.1)
    nd = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(named["model.layers.1.linear_attn.A_log"]) in nd
    assert id(named["model.layers.1.mlp.up_proj.weight"]) not in nd


def test_every_family_stage_modules_run_and_isolate_documents(family):
    """Qwen3, Llama and Qwen2 teachers: the stage 1 / 2 / 3 modules run on the converted student, and a packed
    second document's stage 3 outputs do not depend on the first."""
    from tests.conftest import make_teacher

    from gendistill.convert import convert_teacher
    from gendistill.distill.data import PackedSequence, collate
    from gendistill.distill.stages import build_stage_module

    from tests._trained_like import make_trained_like

    teacher = make_teacher(family)
    torch.manual_seed(0)
    student = make_trained_like(convert_teacher(teacher, [0, 2]).float()).train()
    g = torch.Generator().manual_seed(3)
    d1a, d1b, d2 = (torch.randint(3, 250, (n,), generator=g).tolist() for n in (7, 7, 9))

    def batch(d1):
        ids = d1 + d2
        pos = list(range(len(d1))) + list(range(len(d2)))
        return collate([PackedSequence(ids, pos, [1] * len(ids), [1] * len(ids))])

    for name in ("stage1", "stage2", "stage3a"):
        st = StageConfig(name=name, steps=1, seq_len=16, batch_size=1, optim={"lr": 1e-3})
        mod = build_stage_module(student, teacher, st)
        b = batch(d1a)
        loss = mod(b, float(mod.count(b)))
        assert torch.isfinite(loss) and loss > 0, name
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), name
        student.zero_grad()
    student.eval()
    with torch.no_grad():
        a = student.model(**{k: batch(d1a)[k] for k in ("input_ids", "position_ids")}, use_cache=False).last_hidden_state
        b = student.model(**{k: batch(d1b)[k] for k in ("input_ids", "position_ids")}, use_cache=False).last_hidden_state
    torch.testing.assert_close(a[0, 7:], b[0, 7:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[0, :7], b[0, :7])


def test_stage1_aligns_the_mixers_and_stage2_the_blocks(student, teacher):
    """The stage table's ``aligns``, seen from the loss: stage 1 compares each KDA mixer's output (a KDA layer's MLP
    does not enter it), stage 2 each KDA block's output (the MLP does)."""
    from gendistill.distill.data import PackedSequence, collate
    from gendistill.distill.stages import build_stage_module

    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 300, (20,), generator=g).tolist()
    batch = collate([PackedSequence(ids, list(range(20)), [1] * 20, [1] * 20)])
    mlp = student.model.layers[kda_layer_indices(student)[0]].mlp.down_proj.weight
    losses = {}
    for name in ("stage1", "stage2"):
        st = StageConfig(name=name, steps=1, seq_len=20, batch_size=1, optim={"lr": 1e-3})
        mod = build_stage_module(student, teacher, st)
        with torch.no_grad():
            before = float(mod(batch, 1.0))
            saved = mlp.clone()
            mlp.mul_(1.5)
            after = float(mod(batch, 1.0))
            mlp.copy_(saved)
        losses[name] = (before, after)
    assert losses["stage1"][0] == losses["stage1"][1]
    assert losses["stage2"][0] != losses["stage2"][1]


def test_packed_flash_attention_leaves_a_model_with_attention_dropout_on_sdpa(teacher, student):
    """varlen FlashAttention has no dropout: a student training with attention dropout keeps SDPA (which finds the
    documents in ``position_ids``) while the teacher, in eval mode (no dropout applied), switches even with the same
    config; both are restored after the block. On the GPU the switched student raised at its first training forward
    (``tests/gpu``: the resume test with dropout 0.1)."""
    teacher.config.attention_dropout = student.config.attention_dropout = 0.1
    student.train()
    teacher.eval()
    before = teacher.config._attn_implementation, student.config._attn_implementation
    with packed_flash_attention(teacher, student) as on:
        assert on
        assert teacher.config._attn_implementation == IMPLEMENTATION
        assert student.config._attn_implementation == before[1]
    assert (teacher.config._attn_implementation, student.config._attn_implementation) == before
    with packed_flash_attention(student) as on:
        assert not on and student.config._attn_implementation == before[1]
    student.config.attention_dropout = 0.0
    with packed_flash_attention(student) as on:
        assert on and student.config._attn_implementation == IMPLEMENTATION
