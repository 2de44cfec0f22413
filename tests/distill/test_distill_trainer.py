"""The trainer on a tiny random Llama teacher and the hybrid student converted from it: every stage's held-out loss
falls, freezing, resume, NaN stop, checkpoint pruning, stage outputs loadable, run-folder files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from _distill_helpers import chat_records, text_records, write_jsonl

from gendistill.distill.checkpoint import latest_checkpoint, list_checkpoints
from gendistill.distill.config import parse_recipe
from gendistill.distill.pipeline import run_recipe
from gendistill.distill.trainer import TrainingDivergedError
from gendistill.errors import ConfigError, GendistillError
from gendistill.ownership import write_marker

STAGE_DEFAULTS = {
    "stage1": {"optim": {"lr": 1e-2, "schedule": "constant"}},
    "stage2": {"optim": {"lr": 3e-3, "schedule": "constant"}},
    "stage3a": {"optim": {"lr": 1e-3, "schedule": "wsd", "warmup_ratio": 0.1, "decay_ratio": 0.2}},
    "stage3b": {
        "optim": {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 1},
        "masking": "completion_only",
    },
}


def make_recipe(tmp_path: Path, stages: list[str], steps: int = 8, keep_finished: bool = True, **stage_over):
    text = write_jsonl(tmp_path / "data" / "text.jsonl", text_records(80))
    chat = write_jsonl(tmp_path / "data" / "chat.jsonl", chat_records(80))
    st = []
    for name in stages:
        s = {
            "name": name,
            "steps": steps,
            "seq_len": 32,
            "batch_size": 4,
            "micro_batch_size": 2,
            "eval_every": steps,
            "eval_sequences": 4,
            **STAGE_DEFAULTS[name],
        }
        if name == "stage3b":
            s["data"] = {"sources": [{"path": str(chat), "format": "chat"}], "heldout_documents": 8}
        s.update(stage_over.get(name, {}))
        st.append(s)
    return parse_recipe(
        {
            "teacher": {"spec": "unused-teacher-is-passed-in"},
            "student": {"attention_layers": [0, 2]},
            "data": {"sources": [{"path": str(text), "format": "text"}], "heldout_documents": 8},
            "stages": st,
            "run": {
                "output_dir": str(tmp_path / "run"), "checkpoint_every": 2, "keep_checkpoints": 2, "progress": "none",
                "keep_finished_checkpoints": keep_finished,
            },
        }
    )


def test_all_four_stages_run_and_each_stage_loss_falls(tmp_path, teacher, tok):
    # one step each of stages 1-2 (which align this tiny student almost perfectly) leaves stage 3 something to do
    one = {"steps": 1, "eval_every": 1}
    recipe = make_recipe(
        tmp_path, ["stage1", "stage2", "stage3a", "stage3b"], steps=8, keep_finished=False, stage1=one, stage2=one
    )
    out = run_recipe(recipe, teacher=teacher, tokenizer=tok)
    res = out.results
    assert list(res) == ["stage1", "stage2", "stage3a", "stage3b"]
    for name, r in res.items():
        (s0, before), (s1, after) = r.eval_losses[0], r.eval_losses[-1]
        assert s0 == 0 and s1 == r.steps
        assert after < before, f"{name}: held-out loss {before} -> {after}"
    run = tmp_path / "run"
    # the resolved recipe, progress, metrics
    assert "stage3b" in (run / "recipe.yaml").read_text()
    assert json.loads((run / "progress.json").read_text())["completed"] == list(res)
    assert not (run / "checkpoints" / "stage3a").exists()  # a finished stage's checkpoints are dropped
    data = json.loads((run / "data.json").read_text())
    assert data["stage3b"] == {str(tmp_path / "data" / "chat.jsonl"): 80}
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in recs} == set(res)
    assert all(r["loss"] == r["loss"] for r in recs if "loss" in r)
    # each stage's student is a loadable model folder that reproduces the in-memory student
    from transformers import AutoModelForCausalLM

    import gendistill  # noqa: F401

    loaded = AutoModelForCausalLM.from_pretrained(str(run / "stage3b")).eval()
    student = out.student.eval()
    ids = torch.tensor([tok("the cat sat on a mat")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, student(ids).logits, rtol=1e-4, atol=1e-4)
    for name in res:
        assert (run / name / "config.json").exists() and (run / name / "tokenizer_config.json").exists()


def test_stage1_trains_only_the_kda_mixers(tmp_path, teacher, tok):
    recipe = make_recipe(tmp_path, ["stage1"], steps=3)
    from gendistill.distill.pipeline import build_student

    student = build_student(recipe, teacher, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    run_recipe(recipe, teacher=teacher, tokenizer=tok, student=student)
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".linear_attn." in n for n in changed)
    assert any("A_log" in n for n in changed) and any("q_proj" in n for n in changed)


def test_frozen_parameters_are_bit_identical_and_have_no_optimizer_state(tmp_path, teacher, tok):
    recipe = make_recipe(
        tmp_path, ["stage3a"], steps=3, stage3a={"trainable": {"groups": ["mlp"], "exclude": [r"layers\.0\."]}}
    )
    from gendistill.distill.pipeline import build_student

    student = build_student(recipe, teacher, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    run_recipe(recipe, teacher=teacher, tokenizer=tok, student=student)
    trained = {n for n, _ in student.named_parameters() if ".mlp." in n and not n.startswith("model.layers.0.")}
    for n, p in student.named_parameters():
        if n in trained:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), f"{n} changed although frozen"
    ck = latest_checkpoint(tmp_path / "run" / "checkpoints" / "stage3a")
    opt = json.loads((ck / "optimizer.json").read_text())
    tensors = safetensors.torch.load_file(str(ck / "optimizer.safetensors"))
    assert len({k.split(".")[1] for k in tensors}) == len(trained)
    n_in_groups = sum(len(g["params"]) for g in opt["param_groups"])
    assert n_in_groups == len(trained)


def test_resume_continues_exactly(tmp_path, tok):
    """A run cut after 4 of 6 steps and resumed ends bit-identical to the straight run. The student's attention
    layers use dropout 0.1, so training consumes random numbers: a resume that did not restore the RNG state of the
    checkpoint would draw other dropout masks (it drifts by ~1e-4). Everything else is deterministic on CPU (same
    data, same order of operations), so the comparison is exact."""
    from _distill_helpers import tiny_llama

    teacher = tiny_llama(len(tok))
    teacher.config.attention_dropout = 0.1  # inherited by the converted student's attention layers
    straight = make_recipe(tmp_path / "a", ["stage3a"], steps=6)
    out = run_recipe(straight, teacher=teacher, tokenizer=tok)
    ref = {n: p.detach().clone() for n, p in out.student.named_parameters()}
    ref_losses = out.results["stage3a"].losses
    assert out.student.model.layers[0].self_attn.attention_dropout == 0.1

    cut = make_recipe(tmp_path / "b", ["stage3a"], steps=6)
    first = run_recipe(cut, teacher=teacher, tokenizer=tok, stop_after=4)
    assert first.results["stage3a"].steps == 4 and first.completed == []
    with pytest.raises(ConfigError, match="--resume"):
        run_recipe(cut, teacher=teacher, tokenizer=tok)
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    second = run_recipe(cut, teacher=teacher, tokenizer=tok, resume=True)
    r = second.results["stage3a"]
    assert r.resumed_from == 4 and r.steps == 6
    for n, p in second.student.named_parameters():
        assert torch.equal(p, ref[n]), (n, (p - ref[n]).abs().max().item())
    assert first.results["stage3a"].losses + r.losses == ref_losses


def test_resume_after_a_completed_stage_loads_its_student(tmp_path, teacher, tok):
    recipe = make_recipe(tmp_path, ["stage1", "stage3a"], steps=2)
    a = run_recipe(recipe, teacher=teacher, tokenizer=tok, stop_after=10)  # stage1 completes, stage3a completes
    assert a.completed == ["stage1", "stage3a"]
    b = run_recipe(recipe, teacher=teacher, tokenizer=tok, resume=True)
    assert b.results == {}  # nothing left to do
    for (n, p), (_, q) in zip(a.student.named_parameters(), b.student.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_nan_loss_stops_and_names_no_checkpoint_whose_weights_gave_it(tmp_path, teacher, tok):
    """lr 1e20: a step leaves finite but enormous weights (checkpointed); the next step's loss, computed with exactly
    those weights, is not finite. Resuming from that checkpoint would repeat it whatever the learning rate, so it is
    not called good: it is renamed aside (--resume skips it) and no good checkpoint is left to name."""
    recipe = make_recipe(
        tmp_path, ["stage3a"], steps=6,
        stage3a={"optim": {"lr": 1e20, "schedule": "constant", "clip_grad_norm": None}, "checkpoint_every": 1},
    )
    with pytest.raises(TrainingDivergedError, match=r"(loss|gradient norm) is (nan|inf)") as e:
        run_recipe(recipe, teacher=teacher, tokenizer=tok)
    bad_step = int(str(e.value).split(" step ")[1].split(":")[0])
    stage_dir = tmp_path / "run" / "checkpoints" / "stage3a"
    named = f"step-{bad_step - 1:08d} (its weights gave a non-finite loss or gradient at step {bad_step})"
    assert named in str(e.value)
    assert "last good checkpoint" not in str(e.value) and "no kept checkpoint" in str(e.value)
    assert list_checkpoints(stage_dir) == []  # --resume will not load it
    st = json.loads((stage_dir / f"diverged-step-{bad_step - 1:08d}" / "state.json").read_text())
    assert st["step"] == bad_step - 1  # kept for inspection, not deleted


def test_checkpoints_are_pruned_and_temporary_folders_ignored(tmp_path, teacher, tok):
    recipe = make_recipe(tmp_path, ["stage3a"], steps=5, stage3a={"checkpoint_every": 1})
    stage_dir = tmp_path / "run" / "checkpoints" / "stage3a"
    (stage_dir / ".tmp-step-00000099").mkdir(parents=True)  # a crashed write in a run folder of ours
    write_marker(tmp_path / "run", "run")
    run_recipe(recipe, teacher=teacher, tokenizer=tok)
    assert [s for s, _ in list_checkpoints(stage_dir)] == [4, 5]
    assert latest_checkpoint(stage_dir).name == "step-00000005"
    files = {p.name for p in latest_checkpoint(stage_dir).iterdir()}
    assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "state.json", "rng-0.safetensors",
            "manifest.json"} == files


def test_bad_data_fails_before_training(tmp_path, teacher, tok):
    recipe = make_recipe(tmp_path, ["stage3a", "stage3b"], steps=2)
    bad = write_jsonl(tmp_path / "bad.jsonl", chat_records(11) + [{"messages": [{"role": "user", "content": "?"}]}])
    recipe.stages[1].data.sources[0].path = str(bad)
    with pytest.raises(Exception, match=r"bad\.jsonl:12: conversation has no assistant turn"):
        run_recipe(recipe, teacher=teacher, tokenizer=tok)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stage3a did not start


def test_gradient_accumulation_matches_one_big_batch(tmp_path, teacher, tok):
    """batch 4 as 2 micro-batches of 2 == batch 4 in one micro-batch (the loss is normalised by the global count)."""
    outs = []
    for mb in (2, 4, 1):
        r = make_recipe(tmp_path / f"mb{mb}", ["stage3a"], steps=2, stage3a={"micro_batch_size": mb})
        outs.append(run_recipe(r, teacher=teacher, tokenizer=tok))
    ref = dict(outs[1].student.named_parameters())
    for o in (outs[0], outs[2]):
        assert o.results["stage3a"].losses == pytest.approx(outs[1].results["stage3a"].losses, rel=1e-5)
        for n, p in o.student.named_parameters():
            torch.testing.assert_close(p, ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_bf16_autocast_feeds_the_kda_mixers_one_dtype(tmp_path, teacher, tok):
    """precision bf16 (autocast, fp32 master weights): the KDA mixers get bf16 inputs (so fla's kernels see one dtype),
    training works, and the cast hooks are gone afterwards."""
    from gendistill.distill.pipeline import build_student

    recipe = make_recipe(tmp_path, ["stage1", "stage3a"], steps=2)
    recipe.run.precision = "bf16"
    student = build_student(recipe, teacher, torch.device("cpu"))
    seen = []
    mixers = [layer.linear_attn for layer in student.model.layers if hasattr(layer, "linear_attn")]
    handles = [m.register_forward_hook(lambda m, a, o: seen.append(a[0].dtype)) for m in mixers]
    out = run_recipe(recipe, teacher=teacher, tokenizer=tok, student=student)
    for h in handles:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(torch.isfinite(torch.tensor(r.losses)).all() for r in out.results.values())
    assert all(len(m._forward_pre_hooks) == 0 for m in mixers)
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_gradient_checkpointing_gives_the_same_training(tmp_path, teacher, tok):
    outs = []
    for gc in (False, True):
        r = make_recipe(tmp_path / f"gc{gc}", ["stage3a"], steps=2, stage3a={"gradient_checkpointing": gc})
        outs.append(run_recipe(r, teacher=teacher, tokenizer=tok))
    assert outs[0].results["stage3a"].losses == pytest.approx(outs[1].results["stage3a"].losses, rel=1e-5)
    ref = dict(outs[0].student.named_parameters())
    for n, p in outs[1].student.named_parameters():
        torch.testing.assert_close(p, ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_metrics_go_to_tensorboard_when_it_is_installed(tmp_path, monkeypatch):
    """tensorboard is optional (not a dependency): with a stand-in SummaryWriter module, every numeric field of a
    metrics record becomes a scalar under <stage>/<name> at its step; the JSONL line is written either way."""
    import sys
    import types

    calls = []

    class Writer:
        def __init__(self, logdir):
            calls.append(("init", logdir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    from gendistill.distill.metrics import MetricsLogger

    log = MetricsLogger(tmp_path, enabled=True, tensorboard=True)
    log.log({"stage": "stage3a", "step": 7, "loss": 0.5, "lr": 1e-4})
    log.close()
    assert ("init", str(tmp_path / "tensorboard")) in calls
    assert ("stage3a/loss", 0.5, 7) in calls and ("stage3a/lr", 1e-4, 7) in calls and ("close",) in calls
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 0.5


def test_gradient_checkpointing_is_per_stage(tmp_path, teacher, tok, monkeypatch):
    """On for the stage that asks for it (seen when its module is built), off again for the next one and after."""
    import gendistill.distill.trainer as tr

    recipe = make_recipe(tmp_path, ["stage3a", "stage3b"], steps=1, stage3a={"gradient_checkpointing": True})
    seen = {}
    real = tr.build_stage_module

    def spy(student, teacher, stage):
        seen[stage.name] = [layer.gradient_checkpointing for layer in student.model.layers]
        return real(student, teacher, stage)

    monkeypatch.setattr(tr, "build_stage_module", spy)
    out = run_recipe(recipe, teacher=teacher, tokenizer=tok)
    assert all(seen["stage3a"]) and not any(seen["stage3b"])
    assert not any(layer.gradient_checkpointing for layer in out.student.model.layers)


def test_resume_with_changed_stage_settings_is_refused(tmp_path, teacher, tok):
    cut = make_recipe(tmp_path, ["stage3a"], steps=6)
    run_recipe(cut, teacher=teacher, tokenizer=tok, stop_after=2)
    changed = make_recipe(tmp_path, ["stage3a"], steps=6, stage3a={"seq_len": 48})
    with pytest.raises(GendistillError, match="changed since checkpoint"):
        run_recipe(changed, teacher=teacher, tokenizer=tok, resume=True)


def test_completion_only_training_loss_averages_exactly_the_assistant_tokens(tmp_path, teacher, tok):
    """Stage 3b's first logged loss (taken before its optimizer step) equals forward KL averaged over exactly the
    positions whose next token is an assistant token, recomputed here from the packed sequences with both models.
    The same average over all tokens, or over the mask shifted by one position, differs: the check can fail."""
    import itertools

    from gendistill.convert import convert_teacher
    from gendistill.distill.data import PackedStream
    from gendistill.distill.losses import full_logit_loss

    recipe = make_recipe(tmp_path, ["stage3b"], steps=1, stage3b={"eval_every": 1, "batch_size": 4})
    stage = recipe.stages[0]
    assert stage.masking == "completion_only"
    logged = run_recipe(recipe, teacher=teacher, tokenizer=tok).results["stage3b"].losses[0]

    torch.manual_seed(recipe.run.seed)  # the student as the pipeline builds it, before its one step
    student = convert_teacher(teacher, recipe.student.attention_layers).float().eval()
    packed = PackedStream(recipe.stage_data(stage), tok, stage.seq_len, "completion_only")
    seqs = [s for s, _ in itertools.islice(packed.sequences(), stage.batch_size)]
    ids = torch.from_numpy(np.stack([s.input_ids for s in seqs]))
    pos = torch.from_numpy(np.stack([s.position_ids for s in seqs]))
    with torch.no_grad():
        s_logits = student(ids, position_ids=pos, use_cache=False).logits
        t_logits = teacher(ids, position_ids=pos, use_cache=False).logits
    L = ids.shape[1]
    labels = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], 1)
    per_token = full_logit_loss(s_logits.reshape(-1, s_logits.shape[-1]), t_logits.reshape(-1, t_logits.shape[-1]),
                                labels.reshape(-1), stage.loss).reshape(ids.shape)

    def mean_over(select) -> float:
        """select(seq, t) -> whether position t (predicting token t + 1) is in the loss."""
        m = torch.tensor([[bool(select(s, t)) for t in range(L)] for s in seqs])
        return (per_token[m].sum() / m.sum()).item()

    def same_doc(s, t):
        return t + 1 < L and s.valid[t + 1] and s.position_ids[t + 1] != 0

    assistant = mean_over(lambda s, t: same_doc(s, t) and s.target_mask[t + 1])
    everything = mean_over(same_doc)
    shifted = mean_over(lambda s, t: same_doc(s, t) and s.target_mask[t])
    assert sum(sum(s.target_mask) for s in seqs) < 0.8 * sum(sum(s.valid) for s in seqs)  # prompts are masked out
    # fp32 sums over ~100 tokens in a different order (chunked loss vs this reference): 1e-5 relative
    assert logged == pytest.approx(assistant, rel=1e-5)
    assert abs(everything - assistant) > 1e-3 * assistant and abs(shifted - assistant) > 1e-3 * assistant
