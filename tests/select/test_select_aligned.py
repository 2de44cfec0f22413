"""Reusing one aligned all-KDA student across methods (``--aligned-from``), and what a candidate student is made of.

On the GPU the three model-based methods each aligned their own copy of the same student (docs/results.md section
14: 359-398 s each beside one another); a run may instead take another run's, when both agree on every setting the
alignment depends on. A candidate student is the aligned student with the chosen layers' attention restored from the
teacher: every weight comes from one of the two, whatever the conversion initialised (it is now made on the device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gendistill.errors import ConfigError
from gendistill.select import select_layers
from gendistill.select.session import Session, prepare_output
from tests.select._synthetic import synthetic_teacher


def _no_alignment(monkeypatch) -> list[str]:
    phases: list[str] = []
    real = Session.train

    def train(self, student, stage, phase, progress="none", checkpoints=True):
        phases.append(phase)
        return real(self, student, stage, phase, progress, checkpoints)

    monkeypatch.setattr(Session, "train", train)
    return phases


def test_a_method_reusing_another_runs_alignment_scores_as_if_it_had_aligned_itself(make_cfg, tok, monkeypatch):
    teacher = synthetic_teacher(tok, recall_layers=(1, 3), num_layers=4)
    first = make_cfg("kl-guided", 2, out="kl")
    select_layers(first, teacher=teacher, tokenizer=tok, progress="none")
    own = select_layers(make_cfg("beam-add", 2, out="beam-own", candidate_steps=0), teacher=teacher, tokenizer=tok,
                        progress="none")
    phases = _no_alignment(monkeypatch)
    cfg = make_cfg("beam-add", 2, out="beam-reused", candidate_steps=0, aligned_from=first.output_dir)
    reused = select_layers(cfg, teacher=teacher, tokenizer=tok, progress="none")
    assert not any(p.startswith("align-") for p in phases)  # nothing was aligned again
    assert reused["ranked"] == own["ranked"] and reused["attention_layers"] == own["attention_layers"] == [1, 3]
    cache = json.loads((Path(cfg.output_dir) / "scores.json").read_text())["scores"]
    assert cache["aligned"]["reused_from"] == "kl" and cache["aligned"]["cost"]["train_tokens"] == 0
    assert cache["aligned"]["reused_cost"]["train_tokens"] > 0  # what the alignment cost where it was made
    own_cache = json.loads((Path(make_cfg("beam-add", 2, out="beam-own").output_dir) / "scores.json").read_text())
    sets = [k for k in cache if k.startswith("attn:")]
    assert len(sets) > 4 and set(sets) == {k for k in own_cache["scores"] if k.startswith("attn:")}
    for key in sets:  # the same student, so the same score for every set (the CPU path is deterministic)
        assert cache[key]["heldout_kl"] == pytest.approx(own_cache["scores"][key]["heldout_kl"], rel=1e-5), key


@pytest.mark.parametrize("change, message", [
    ({"align_steps": 3}, "aligned under other settings (align_steps)"),
    ({"seq_len": 16, "align_lr": 2e-3}, "(seq_len, align_lr)"),
])
def test_an_alignment_made_under_other_settings_is_refused_before_anything_is_written(make_cfg, tok, change,
                                                                                      message):
    teacher = synthetic_teacher(tok, recall_layers=(1,), num_layers=3)
    first = make_cfg("kl-guided", 1, out="kl", candidate_steps=0)
    select_layers(first, teacher=teacher, tokenizer=tok, progress="none")
    cfg = make_cfg("greedy-learned", 1, out="greedy", aligned_from=first.output_dir, **change)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_layers(cfg, teacher=teacher, tokenizer=tok, progress="none")
    assert not Path(cfg.output_dir).exists()


def test_aligned_from_must_be_a_finished_selection_run_other_than_out(make_cfg, tok, tmp_path):
    teacher = synthetic_teacher(tok, recall_layers=(1,), num_layers=3)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConfigError, match="not a select-layers run folder"):
        select_layers(make_cfg("kl-guided", 1, out="a", aligned_from=str(plain)), teacher=teacher, tokenizer=tok)
    unfinished = make_cfg("kl-guided", 1, out="unfinished")
    prepare_output(unfinished, resume=False, overwrite=False)  # settings written, nothing aligned yet
    with pytest.raises(ConfigError, match="its alignment has not finished"):
        select_layers(make_cfg("beam-add", 1, out="b", aligned_from=unfinished.output_dir), teacher=teacher,
                      tokenizer=tok)
    with pytest.raises(ConfigError, match="is --out itself"):
        select_layers(make_cfg("kl-guided", 1, out="unfinished", aligned_from=unfinished.output_dir), resume=True,
                      teacher=teacher, tokenizer=tok)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_aligned_from_does_not_change_the_fingerprint_so_a_run_resumes_with_or_without_it(make_cfg):
    from gendistill.select.config import fingerprint

    assert fingerprint(make_cfg("beam-add", 2, aligned_from="/elsewhere")) == fingerprint(make_cfg("beam-add", 2))


def test_every_weight_of_a_candidate_is_the_aligned_students_or_the_teachers(make_cfg, tok):
    teacher = synthetic_teacher(tok, recall_layers=(2,), num_layers=4)
    cfg = make_cfg("beam-add", 1, candidate_steps=0)
    session = Session(cfg, prepare_output(cfg, False, False), teacher=teacher, tokenizer=tok, progress="none")
    aligned = session.aligned_state()
    student = session.candidate_student([2])
    t_sd = teacher.state_dict()
    for name, value in student.state_dict().items():
        source = aligned.get(name, t_sd.get(name))
        assert source is not None, f"{name}: neither the aligned student's nor the teacher's"
        assert value.equal(source.to(value.dtype)), name
    assert any(".layers.2.self_attn." in n for n in student.state_dict())  # the restored attention layer


@pytest.mark.parametrize("method", ["kl-guided", "greedy-learned", "beam-add"])
def test_a_straight_runs_cost_counts_each_second_once(make_cfg, tok, method):
    """The alignment is timed as its own record; the first candidate (or greedy-learned's mix), which asks for the
    aligned student, must not time it again: a fresh run's summed seconds cannot exceed its wall time. (On the card
    the first candidate of kl-guided and beam-add were recorded at 409-430 s, the alignment's 397 s included.)"""
    teacher = synthetic_teacher(tok, recall_layers=(1,), num_layers=3)
    res = select_layers(make_cfg(method, 1, align_steps=6), teacher=teacher, tokenizer=tok, progress="none")
    cost = res["cost"]
    assert cost["cpu_minutes"] * 60 <= cost["wall_seconds_this_invocation"] * 1.02 + 0.05, cost


def test_a_candidates_brief_distillation_writes_no_checkpoint(make_cfg, tok, monkeypatch):
    """Each kl-guided set's 20-step distillation wrote a checkpoint of the student and its optimizer (about 1.6 GB for
    SmolLM2) only to delete it: the alignment keeps its checkpoints (it is resumable), the candidates write none, and
    the scores are those of a run that wrote them."""
    import gendistill.distill.trainer as trainer

    teacher = synthetic_teacher(tok, recall_layers=(1,), num_layers=3)
    with_ckpt = select_layers(make_cfg("kl-guided", 1, out="a"), teacher=teacher, tokenizer=tok, progress="none")
    written: list[str] = []
    real = trainer.save_checkpoint

    def save(stage_dir, *args, **kwargs):
        written.append(Path(stage_dir).parent.parent.name)  # runs/<phase>/<stage>
        return real(stage_dir, *args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    res = select_layers(make_cfg("kl-guided", 1, out="b"), teacher=teacher, tokenizer=tok, progress="none")
    assert written and all(p.startswith("align-") for p in written), written
    assert res["ranked"] == with_ckpt["ranked"]
    for i, rec in with_ckpt["scores"]["per_layer"].items():
        assert res["scores"]["per_layer"][i]["heldout_kl"] == pytest.approx(rec["heldout_kl"], rel=1e-5)


class _Stop(Exception):
    pass


def _stopped_reusing_run(make_cfg, tok, monkeypatch):
    """Run "kl" (aligns), then "reuser" with --aligned-from kl stopped in its second candidate's training; returns
    (teacher, kl's settings, reuser's settings without --aligned-from, the phases trained from now on)."""
    teacher = synthetic_teacher(tok, recall_layers=(1,), num_layers=3)
    first = make_cfg("kl-guided", 1, out="kl")
    select_layers(first, teacher=teacher, tokenizer=tok, progress="none")
    phases, real, stop = [], Session.train, [True]

    def train(self, student, stage, phase, progress="none", checkpoints=True):
        phases.append(phase)
        if stop[0] and len(phases) == 2:
            raise _Stop
        return real(self, student, stage, phase, progress, checkpoints)

    monkeypatch.setattr(Session, "train", train)
    with pytest.raises(_Stop):
        select_layers(make_cfg("kl-guided", 1, out="reuser", aligned_from=first.output_dir), teacher=teacher,
                      tokenizer=tok, progress="none")
    assert not any(p.startswith("align-") for p in phases)
    phases.clear()
    stop[0] = False
    return teacher, first, make_cfg("kl-guided", 1, out="reuser"), phases


def test_a_run_that_reused_an_alignment_resumes_without_aligned_from_from_the_same_student(make_cfg, tok,
                                                                                            monkeypatch):
    """The run stores where the alignment came from; resumed without --aligned-from it reloaded nothing from there
    but aligned a student of its own (stages 1 and 2), dropped the reused record and mixed two students' scores."""
    teacher, first, cfg, phases = _stopped_reusing_run(make_cfg, tok, monkeypatch)
    res = select_layers(cfg, resume=True, teacher=teacher, tokenizer=tok, progress="none")
    assert phases and not any(p.startswith("align-") for p in phases), phases
    assert not (Path(cfg.output_dir) / "aligned").exists()
    rec = json.loads((Path(cfg.output_dir) / "scores.json").read_text())["scores"]["aligned"]
    assert rec["reused_from"] == "kl" and rec["reused_path"] == str(Path(first.output_dir).resolve())
    assert rec["reused_cost"]["train_tokens"] > 0
    straight = json.loads((Path(first.output_dir) / "layers.json").read_text())
    for i, layer in straight["scores"]["per_layer"].items():  # the same aligned student: the same scores
        assert res["scores"]["per_layer"][int(i)]["heldout_kl"] == pytest.approx(layer["heldout_kl"], rel=1e-5)


def test_a_resume_never_aligns_again_when_the_reused_alignment_is_gone(make_cfg, tok, monkeypatch, tmp_path):
    teacher, first, cfg, phases = _stopped_reusing_run(make_cfg, tok, monkeypatch)
    moved = tmp_path / "moved-kl"
    Path(first.output_dir).rename(moved)
    with pytest.raises(ConfigError, match=r"reused .*kl's alignment, which is no longer there; resume with "
                                          r"--aligned-from RUN"):
        select_layers(cfg, resume=True, teacher=teacher, tokenizer=tok, progress="none")
    other = make_cfg("kl-guided", 1, out="other")  # another finished alignment while the reused one is there: refused
    select_layers(other, teacher=teacher, tokenizer=tok, progress="none")
    phases.clear()
    moved.rename(first.output_dir)
    with pytest.raises(ConfigError, match="this run reused .*kl's alignment; resume with --aligned-from"):
        select_layers(cfg.model_copy(update={"aligned_from": other.output_dir}), resume=True, teacher=teacher,
                      tokenizer=tok, progress="none")
    Path(first.output_dir).rename(moved)
    assert not phases and not (Path(cfg.output_dir) / "aligned").exists()
    select_layers(cfg.model_copy(update={"aligned_from": str(moved)}), resume=True, teacher=teacher, tokenizer=tok,
                  progress="none")  # where it is now: taken, and remembered
    assert not any(p.startswith("align-") for p in phases)
    rec = json.loads((Path(cfg.output_dir) / "scores.json").read_text())["scores"]["aligned"]
    assert rec["reused_path"] == str(moved.resolve()) and rec["reused_from"] == "kl"


def test_a_resume_whose_own_aligned_student_is_gone_is_refused(make_cfg, tok):
    import shutil

    teacher = synthetic_teacher(tok, recall_layers=(1,), num_layers=3)
    cfg = make_cfg("kl-guided", 1, candidate_steps=0)
    select_layers(cfg, teacher=teacher, tokenizer=tok, progress="none")
    shutil.rmtree(Path(cfg.output_dir) / "aligned")
    scores = Path(cfg.output_dir) / "scores.json"
    data = json.loads(scores.read_text())
    del data["scores"]["attn:0"]  # a set still to score: it needs the aligned student
    scores.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="aligned: missing, but .*scores.json holds scores of the student"):
        select_layers(cfg, resume=True, teacher=teacher, tokenizer=tok, progress="none")
    assert not (Path(cfg.output_dir) / "aligned").exists()
