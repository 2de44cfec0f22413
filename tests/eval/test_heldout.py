"""Held-out fidelity (gendistill.eval.heldout): the one function behind every teacher-forced top-1 / KL figure.

Checked against a slow reference in float64 that runs every packed document on its own through the full model
(``model(input_ids=doc).logits``): the fast path reads packed rows, computes logits only at scored positions and in
chunks. A copy of the teacher (a hybrid that keeps attention in every layer) must score KL 0 and top-1 100 % on packed
rows: the defect this module replaced let the teacher attend across the documents of a packed row (it was called with
transformers' cache, which skips the packed-sequence mask) while the student kept them apart.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from gendistill.convert.convert import convert_teacher
from gendistill.errors import DataError
from gendistill.eval.fidelity import conversation_rows, teacher_forced
from gendistill.eval.heldout import heldout_fidelity, load_heldout_rows, save_heldout_rows
from tests.fixtures_teachers import tiny_model, tiny_tokenizer

V = 300


def packed_rows(doc_lengths: list[list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of packed documents (positions restart at each), ``loss_mask``/``labels`` as collate makes them (a
    position is scored when the next token belongs to the same document), some positions left out at random."""
    g = torch.Generator().manual_seed(seed)
    T = sum(doc_lengths[0])
    ids = torch.randint(3, V, (len(doc_lengths), T), generator=g)
    pos = torch.cat([torch.cat([torch.arange(n) for n in row])[None] for row in doc_lengths])
    mask = torch.zeros(len(doc_lengths), T, dtype=torch.bool)
    mask[:, :-1] = pos[:, 1:] != 0
    mask &= torch.rand(mask.shape, generator=g) > 0.2
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = torch.where(mask[:, :-1], ids[:, 1:], -100)
    return {"input_ids": ids, "position_ids": pos, "loss_mask": mask, "labels": labels}


@torch.no_grad()
def reference(teacher, student, rows) -> dict[str, float]:
    """Every document alone through each full model, float64: top-1, KL(teacher ‖ student), both NLLs."""
    t64, s64 = copy.deepcopy(teacher).double(), copy.deepcopy(student).double()
    agree = kl = t_nll = s_nll = 0.0
    n = 0
    for r in range(rows["input_ids"].shape[0]):
        pos = rows["position_ids"][r]
        starts = [i for i in range(len(pos)) if pos[i] == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:]):
            doc = rows["input_ids"][r, a:b][None]
            lt = t64(input_ids=doc).logits[0].log_softmax(-1)
            ls = s64(input_ids=doc).logits[0].log_softmax(-1)
            for i in range(b - a):
                if not rows["loss_mask"][r, a + i]:
                    continue
                y = int(rows["labels"][r, a + i])
                agree += float(lt[i].argmax() == ls[i].argmax())
                kl += float((lt[i].exp() * (lt[i] - ls[i])).sum())
                t_nll -= float(lt[i, y])
                s_nll -= float(ls[i, y])
                n += 1
    return {"top1_agreement": agree / n, "kl_teacher_student": kl / n, "teacher_nll": t_nll / n,
            "student_nll": s_nll / n, "n_tokens": n}


@pytest.fixture(scope="module")
def teacher():
    return tiny_model("llama", V, seed=0, tie_word_embeddings=False)


DOCS = [[7, 9, 8], [24], [5, 19]]


def test_a_copy_of_the_teacher_scores_perfectly_on_packed_rows(teacher):
    """A hybrid that keeps attention in every layer computes the teacher's function; on packed rows it must agree
    everywhere with KL 0 — which holds only if the teacher, too, reads each document on its own."""
    twin = convert_teacher(teacher, list(range(teacher.config.num_hidden_layers)))
    res = heldout_fidelity(teacher, twin, packed_rows(DOCS), batch_rows=2)
    assert res["top1_agreement"] == 1.0
    assert abs(res["kl_teacher_student"]) < 1e-6
    assert res["n_tokens"] > 40
    # the teacher read with transformers' cache (the replaced computation) attends across the documents of a row
    rows = packed_rows(DOCS)
    leaky = teacher(input_ids=rows["input_ids"], position_ids=rows["position_ids"]).logits
    isolated = teacher(input_ids=rows["input_ids"], position_ids=rows["position_ids"], use_cache=False).logits
    assert not torch.allclose(leaky[0, 7:], isolated[0, 7:], atol=1e-3), "the defect this test guards is gone?"


@pytest.mark.parametrize("batch_rows,chunk_tokens", [(1, 4096), (2, 5), (8, 1)])
def test_fidelity_equals_the_per_document_reference(teacher, batch_rows, chunk_tokens):
    """A hybrid student with KDA layers; any batching and logit chunking gives the float64 per-document figures
    (tolerance 1e-4 relative: float32 logits of a 300-token vocabulary against float64)."""
    student = convert_teacher(tiny_model("llama", V, seed=0, tie_word_embeddings=False), [0])
    with torch.no_grad():  # move the student away from the teacher so that KL and top-1 are not trivial
        for p in student.model.layers[1].mlp.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = packed_rows(DOCS, seed=1)
    ref = reference(teacher, student, rows)
    res = heldout_fidelity(teacher, student, rows, batch_rows=batch_rows, chunk_tokens=chunk_tokens)
    assert res["n_tokens"] == ref["n_tokens"]
    assert res["n_sequences"] == len(DOCS)
    assert 0.0 < ref["top1_agreement"] < 1.0 and ref["kl_teacher_student"] > 1e-3
    for k in ("top1_agreement", "kl_teacher_student", "teacher_nll", "student_nll"):
        assert math.isclose(res[k], ref[k], rel_tol=1e-4, abs_tol=1e-6), (k, res[k], ref[k])


def test_rows_without_scored_positions_or_labels(teacher):
    rows = packed_rows(DOCS)
    none = {**rows, "loss_mask": torch.zeros_like(rows["loss_mask"])}
    assert heldout_fidelity(teacher, teacher, none) == {"n_sequences": 3, "n_tokens": 0}
    no_labels = {k: v for k, v in rows.items() if k != "labels"}
    res = heldout_fidelity(teacher, teacher, no_labels)
    assert res["kl_teacher_student"] == pytest.approx(0.0, abs=1e-7) and "student_nll" not in res
    with pytest.raises(DataError, match="loss_mask"):
        heldout_fidelity(teacher, teacher, {k: v for k, v in rows.items() if k != "loss_mask"})
    with pytest.raises(DataError, match="another tokenizer"):  # rows of another vocabulary: refused, not scored
        heldout_fidelity(teacher, teacher, {**rows, "input_ids": rows["input_ids"] + V})


def test_rows_file_round_trip_and_bad_files(tmp_path):
    rows = packed_rows(DOCS)
    path = save_heldout_rows(tmp_path / "heldout" / "stage3a.safetensors", rows, {"stage": "stage3a"})
    back, meta = load_heldout_rows(path)
    assert meta == {"stage": "stage3a"}
    for k, v in rows.items():
        assert torch.equal(back[k], v) and back[k].dtype == v.dtype
    with pytest.raises(DataError, match="no such"):
        load_heldout_rows(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a held-out rows file"):
        load_heldout_rows(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"input_ids": rows["input_ids"]}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="not a held-out rows file"):
        load_heldout_rows(tmp_path / "other.safetensors")


def test_chat_fidelity_scores_assistant_tokens_of_each_conversation_alone(teacher):
    """``--fidelity-chat``: one row per conversation, padding after the end; equal to each conversation alone."""
    tok = tiny_tokenizer(V)
    convs = [[{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello, friend"}],
             [{"role": "user", "content": "a much longer question, with words"},
              {"role": "assistant", "content": "ok"}]]
    rows = conversation_rows(tok, convs, max_tokens=256)
    assert rows["input_ids"].shape[0] == 2
    short = int((rows["input_ids"][0] != 0).nonzero().max()) + 1
    assert rows["loss_mask"][0, short - 1:].sum() == 0, "padding is never scored"
    student = convert_teacher(tiny_model("llama", V, seed=0, tie_word_embeddings=False), [0])
    res = teacher_forced(teacher, student, tok, convs, show_progress=False)
    ref = reference(teacher, student, {k: v[:1, :short] if k != "input_ids" else v[:1, :short]
                                       for k, v in rows.items()})
    one = heldout_fidelity(teacher, student, {k: v[:1, :short] for k, v in rows.items()})
    assert math.isclose(one["kl_teacher_student"], ref["kl_teacher_student"], rel_tol=1e-4)
    assert res["n_conversations"] == 2 and res["n_tokens"] == int(rows["loss_mask"].sum())
    assert res["n_tokens"] > one["n_tokens"] > 0


def test_logits_are_float32_whatever_the_models_dtype_and_the_callers_autocast(teacher):
    """bf16 models under bf16 autocast (the trainer on CUDA; ``gendistill eval`` loads bf16 there): the hidden states
    are the models' own, but the vocabulary projection and everything after it run in float32, as on CPU. Reference:
    the same hidden states projected in float64. Tolerance 2e-6 relative: float32 logits of bf16 operands against
    float64; the bf16 projection this replaced missed it by 1.5e-5 on these tiny models."""
    from gendistill.eval.heldout import document_hidden, fidelity_sums
    from gendistill.models.packed_attention import packed_attention_kwargs

    student = convert_teacher(tiny_model("llama", V, seed=0, tie_word_embeddings=False), [0])
    with torch.no_grad():
        for p in student.model.layers[1].mlp.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t16, s16 = copy.deepcopy(teacher).to(torch.bfloat16), copy.deepcopy(student).to(torch.bfloat16)
    rows = packed_rows(DOCS, seed=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        res = heldout_fidelity(t16, s16, rows, batch_rows=len(DOCS))
        packed = packed_attention_kwargs(rows["position_ids"])
        sel = rows["loss_mask"].reshape(-1).nonzero().squeeze(-1)
        h_t = document_hidden(t16, rows, packed).reshape(-1, 64)[sel]
        h_s = document_hidden(s16, rows, packed).reshape(-1, 64)[sel]
    lt = h_t.double() @ t16.lm_head.weight.double().T
    ls = h_s.double() @ s16.lm_head.weight.double().T
    agree, kl, t_nll, s_nll = (float(x) / len(sel) for x in fidelity_sums(lt.double(), ls.double(),
                                                                          rows["labels"].reshape(-1)[sel]))
    assert h_t.dtype == torch.bfloat16
    for k, ref in (("kl_teacher_student", kl), ("teacher_nll", t_nll), ("student_nll", s_nll)):
        assert math.isclose(res[k], ref, rel_tol=2e-6), (k, res[k], ref)
    assert res["top1_agreement"] == agree
