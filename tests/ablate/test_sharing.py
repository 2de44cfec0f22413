"""Prefix sharing, resume and skip, with the trainer and the evaluator replaced by fakes that write what the real
ones write (a run folder with progress.json and the student's config.json; a results.json): every distinct stage
prefix is trained exactly once, a stopped stage is resumed, and a finished grid reruns nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gendistill.ablate.grid import load_grid
from gendistill.ablate.runner import describe_plan, plan_grid, read_metrics, run_grid
from gendistill.ablate.store import cell_nodes
from gendistill.errors import ConfigError


class FakeTrainer:
    """Stands in for ``run_recipe``; ``stop_at`` = the index of a call that stops before finishing its stage."""

    def __init__(self, stop_at: int | None = None):
        self.calls: list[dict] = []
        self.stop_at = stop_at

    def __call__(self, recipe, *, resume, overwrite, teacher, tokenizer, stop_after, world):
        (stage,) = recipe.stages
        run = Path(recipe.run.output_dir)
        self.calls.append({"stage": stage.name, "dir": run.name, "student": recipe.student.path, "resume": resume,
                           "overwrite": overwrite, "partial_before": (run / "recipe.yaml").exists()})
        progress = json.loads((run / "progress.json").read_text()) if (run / "progress.json").exists() else {}
        if resume and stage.name in progress.get("completed", []) and not (run / stage.name / "config.json").exists():
            # the real run_recipe loads the completed stage's student to continue from it, and stops without one
            raise ConfigError(f"student.path: {run / stage.name} is not a gendistill student folder")
        if overwrite:  # the real one clears the folder (its marker kept) and starts the stage over
            for p in run.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        run.mkdir(parents=True, exist_ok=True)
        (run / "recipe.yaml").write_text("x")
        if self.stop_at is not None and len(self.calls) - 1 == self.stop_at:
            (run / "checkpoints" / stage.name / "step-00000001").mkdir(parents=True)  # a checkpoint to resume from
            return {"completed": []}
        (run / stage.name).mkdir(exist_ok=True)
        (run / stage.name / "config.json").write_text("{}")
        (run / "progress.json").write_text(json.dumps({"completed": [stage.name]}))
        # logit stages record held-out fidelity next to the loss (eval_kl, eval_top1, eval_tokens); stage 1 does not
        fid = {"eval_kl": 0.25, "eval_top1": 0.75, "eval_tokens": 96} if stage.name.startswith("stage3") else {}
        (run / "metrics.jsonl").write_text(json.dumps({"stage": stage.name, "step": 0, "eval_loss": 2.0}) + "\n"
                                           + json.dumps({"stage": stage.name, "step": 2, "tokens": 4096,
                                                         "eval_loss": 1.5, **fid})
                                           + "\n")
        return {"completed": [stage.name]}


class FakeEval:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, cfg):
        self.calls.append(cfg.models)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        t, s = "teacher", Path(cfg.models[1]).name
        rows = [{"task": "quiz", "model": m, "protocol": p, "acc": a, "stderr": 0.05, "chance": 0.25, "n": 40}
                for m, p, a in ((t, "loglik", 0.6), (t, "generate", 0.5), (s, "loglik", 0.55), (s, "generate", 0.3))]
        res = {"meta": {"models": [t, s], "complete": True}, "rows": rows, "fidelity": []}
        (out / "results.json").write_text(json.dumps(res))
        return res


@pytest.fixture()
def quiz(tmp_path) -> dict:
    """The grids' evaluation: a task file (run_grid checks that the tasks exist before training; the fake
    evaluator never reads it)."""
    path = tmp_path / "quiz.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer_idx": 1}) + "\n")
    return {"tasks": str(path)}


@pytest.fixture()
def fakes(monkeypatch):
    import gendistill.distill.pipeline as pipeline
    import gendistill.eval.runner as eval_runner

    trainer, ev = FakeTrainer(), FakeEval()
    monkeypatch.setattr(pipeline, "run_recipe", trainer)
    monkeypatch.setattr(eval_runner, "run_eval", ev)
    return trainer, ev


AXES = {"masking": ["completion_only", "all_tokens"], "freeze": ["attention", "none"]}


def test_stage3b_axes_share_one_stage3a_student(write_grid, fakes, quiz):
    trainer, ev = fakes
    g = load_grid(write_grid(AXES, eval=quiz))
    plans = plan_grid(g)
    chains = [[n.id for n in p.nodes] for p in plans]
    assert len({c[0] for c in chains}) == 1 and len({c[1] for c in chains}) == 1  # stage1, stage3a shared by all
    # masking=completion_only and freeze=attention are both the base recipe: one stage3b node, one evaluation
    assert len({c[2] for c in chains}) == 3 and chains[0] == chains[2] and plans[0].eval_dir == plans[2].eval_dir

    out = run_grid(g, teacher=object(), tokenizer=object(), progress="none")
    assert [c["stage"] for c in trainer.calls] == ["stage1", "stage3a", "stage3b", "stage3b", "stage3b"]
    # each node after the first trains from its parent node's student
    s1, s3a = plans[0].nodes[0], plans[0].nodes[1]
    assert trainer.calls[0]["student"] is None and trainer.calls[1]["student"] == str(s1.student_dir)
    assert all(c["student"] == str(s3a.student_dir) for c in trainer.calls[2:])
    assert len(ev.calls) == 3 and all(m[0] == "teacher" for m in ev.calls)
    assert all(c["complete"] for c in out["cells"]) and not out["stopped"]
    for p in plans:  # each cell: its recipe, metrics and evaluation in its own folder
        assert {"recipe.yaml", "cell.json", "metrics.json", "metrics.jsonl"} <= {f.name for f in p.dir.iterdir()}
        assert json.loads((p.dir / "eval" / "results.json").read_text())["meta"]["complete"]
        assert (p.dir / "student").resolve() == p.final.student_dir.resolve()
        summary = json.loads((p.dir / "metrics.json").read_text())
        assert summary["stage3b"]["eval_loss_last"] == 1.5
        assert (summary["stage3a"]["eval_kl_last"], summary["stage3a"]["eval_top1_last"]) == (0.25, 0.75)
        assert summary["stage1"]["eval_kl_last"] is None and summary["stage1"]["eval_top1_last"] is None
        assert (summary["stage3a"]["eval_step_last"], summary["stage3a"]["eval_at_tokens_last"]) == (2, 4096)
    rep = json.loads(Path(out["report"]["json"]).read_text())
    assert rep["evaluated"] == 4 and [a["axis"] for a in rep["axes"]] == ["masking", "freeze"]
    # every cell trains stage 3a on one budget: points for each, no budget-curve axis, the plot drawn
    points = rep["budget_curve"]["points"]
    assert len(points) == 4 and rep["budget_curve"]["curve_axes"] == []
    assert all(p["kl_3a"] == 0.25 and p["top1_3b"] == 0.75 and p["tokens_3a"] == 2 * 2 * 32 for p in points)
    assert Path(out["report"]["budget_curve"]).name == "budget_curve.png"

    # rerun: nothing is trained or evaluated again; the dry run says every cell is finished
    run_grid(load_grid(write_grid(AXES, eval=quiz)), teacher=object(), tokenizer=object(), progress="none")
    assert len(trainer.calls) == 5 and len(ev.calls) == 3
    plan = describe_plan(plan_grid(load_grid(write_grid(AXES, eval=quiz))))
    assert all(c["skipped"] for c in plan["cells"]) and plan["nodes_to_train"] == 0 and plan["evals_to_run"] == 0


def test_a_stopped_stage_resumes_and_later_cells_wait(write_grid, monkeypatch, quiz):
    import gendistill.distill.pipeline as pipeline
    import gendistill.eval.runner as eval_runner

    trainer, ev = FakeTrainer(stop_at=1), FakeEval()  # stage3a of the first cell stops early
    monkeypatch.setattr(pipeline, "run_recipe", trainer)
    monkeypatch.setattr(eval_runner, "run_eval", ev)
    grid = write_grid({"masking": ["completion_only", "all_tokens"]}, eval=quiz)
    out = run_grid(load_grid(grid), teacher=object(), tokenizer=object(), progress="none")
    assert out["stopped"] and [c["stage"] for c in trainer.calls] == ["stage1", "stage3a"] and not ev.calls
    plan = describe_plan(plan_grid(load_grid(grid)))
    assert [n["status"] for n in plan["cells"][0]["nodes"]] == ["done", "partial", "todo"]

    trainer.stop_at = None
    out = run_grid(load_grid(grid), teacher=object(), tokenizer=object(), progress="none")
    assert not out["stopped"]
    assert [c["stage"] for c in trainer.calls[2:]] == ["stage3a", "stage3b", "stage3b"]
    assert trainer.calls[2]["partial_before"] and all(c["resume"] for c in trainer.calls)
    assert len(ev.calls) == 2


def test_node_ids_hash_what_fixes_the_student_and_nothing_else(write_grid):
    g = load_grid(write_grid({"io": {"a": {}, "b": {"stages[stage1].log_every": 5, "stages[stage1].checkpoint_every": 9,
                                                    "run.output_dir": "elsewhere", "run.progress": "bar"}},
                              "lr1": {"x": {"stages[stage1].optim.lr": 5e-4}},
                              "seed": {"s": {"run.seed": 3}}}))
    ids = {c.name: [n.id for n in cell_nodes(c, Path("/r"))] for c in g.cells}
    assert ids["io=a"] == ids["io=b"]  # I/O-only settings do not split a prefix
    assert ids["lr1=x"][0] != ids["io=a"][0] and ids["lr1=x"][1] != ids["io=a"][1]  # a change propagates downstream
    assert all(i != j for i, j in zip(ids["seed=s"], ids["io=a"]))


def test_metrics_of_a_run_without_fidelity_records_still_load(write_grid, tmp_path):
    """Runs written before the trainer recorded eval_kl/eval_top1 load with None; a record that has them is read."""
    g = load_grid(write_grid(AXES))
    n1, n3a, n3b = plan_grid(g)[0].nodes
    for n, extra in ((n1, {}), (n3a, {}), (n3b, {"eval_kl": 0.5, "eval_top1": 0.6, "eval_tokens": 40})):
        n.dir.mkdir(parents=True)
        (n.dir / "metrics.jsonl").write_text(
            json.dumps({"stage": n.stage, "step": 1, "tokens": 64, "loss": 3.0}) + "\n"
            + json.dumps({"stage": n.stage, "step": 1, "tokens": 64, "eval_loss": 2.5, **extra}) + "\n")
    records, summary = read_metrics([n1, n3a, n3b])
    assert len(records) == 6 and summary["stage3a"]["eval_loss_last"] == 2.5
    assert summary["stage3a"]["eval_kl_last"] is None and summary["stage3a"]["eval_top1_last"] is None
    assert (summary["stage3b"]["eval_kl_last"], summary["stage3b"]["eval_top1_last"],
            summary["stage3b"]["eval_tokens_last"]) == (0.5, 0.6, 40)


def test_long_context_evaluation_settings_reach_the_evaluator(write_grid, monkeypatch, quiz):
    """eval.context_lengths / eval.depths (the generated long-context tasks of a grid, e.g. layer selection's recall
    at 2K-8K) reach gendistill eval as its --context-lengths / --depths; unset, they leave an evaluation's id as it
    was before they existed (the committed sweep's evaluations keep their folders); a bad value fails before anything
    trains."""
    import gendistill.distill.pipeline as pipeline
    import gendistill.eval.runner as eval_runner
    from gendistill.ablate.runner import check_eval
    from gendistill.ablate.store import _digest, eval_id

    seen = []

    class Recording(FakeEval):
        def __call__(self, cfg):
            seen.append((cfg.context_lengths, cfg.depths))
            return super().__call__(cfg)

    monkeypatch.setattr(pipeline, "run_recipe", FakeTrainer())
    monkeypatch.setattr(eval_runner, "run_eval", Recording())
    g = load_grid(write_grid({"masking": ["completion_only"]},
                             eval={**quiz, "context_lengths": "2k,8k", "depths": "0,50,100"}))
    run_grid(g, teacher=object(), tokenizer=object(), progress="none")
    assert seen == [([2048, 8192], [0.0, 0.5, 1.0])]

    plain = load_grid(write_grid({"masking": ["completion_only"]}, eval=quiz))
    final = plan_grid(plain)[0].final
    ev = plain.config.eval
    old = {k: v for k, v in ev.model_dump(mode="json").items() if k not in ("context_lengths", "depths")}
    assert eval_id(final, "t", ev) == _digest([final.id, "t", old])
    assert eval_id(final, "t", g.config.eval) != eval_id(final, "t", ev)
    bad = load_grid(write_grid({"masking": ["completion_only"]}, eval={**quiz, "context_lengths": "2k,lots"}))
    with pytest.raises(ConfigError, match=r"eval\.context_lengths: .*'lots' is not a token count"):
        check_eval(bad)


def test_a_missing_layer_file_stops_the_grid_before_anything_trains(write_grid, fakes, quiz, tmp_path):
    """A layers axis whose variants read select-layers results (JSON files): the dry run plans without them (they
    may be made on the GPU first); a run with one missing stops at once, naming the cell and the file."""
    from gendistill.errors import ConfigError

    trainer, ev = fakes
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({"attention_layers": [1]}))
    axes = {"layers": {"mine": {"student.attention_layers": str(chosen)},
                       "lost": {"student.attention_layers": "select/lost/layers.json"}}}
    g = load_grid(write_grid(axes, eval=quiz))
    assert len(describe_plan(plan_grid(g))["cells"]) == 2
    with pytest.raises(ConfigError, match=r"cell layers=lost: student\.attention_layers: layer file "
                                          r"select/lost/layers\.json does not exist"):
        run_grid(g, teacher=object(), tokenizer=object(), progress="none")
    assert trainer.calls == [] and ev.calls == []


def test_a_mixer_the_card_cannot_train_stops_the_grid_before_anything_trains(write_grid, fakes, quiz, monkeypatch):
    """A mixer axis with Gated DeltaNet on a card where fla refuses its backward (an H100 under Triton 3.6, results
    section 17): the grid stops at once naming the cell, before KDA's cell trains; off the GPU nothing is refused."""
    from gendistill.ablate import runner
    from gendistill.errors import ConfigError
    from gendistill.layers import registry

    trainer, ev = fakes
    g = load_grid(write_grid({"mixer": ["kda", "gated_deltanet"]}, eval=quiz))
    runner.check_mixers_train_here(g)  # on this CPU: the PyTorch path trains every mixer
    monkeypatch.setattr(registry, "fla_gated_backward_refused", lambda **_: "fla refuses it on this card")
    monkeypatch.setattr(runner, "resolve_device", lambda name, what="--device": torch.device("cuda"))
    with pytest.raises(ConfigError, match=r"cell mixer=gated_deltanet: student mixers gated_deltanet cannot train on "
                                          r"this GPU: fla refuses it on this card"):
        run_grid(g, teacher=object(), tokenizer=object(), progress="none")
    assert trainer.calls == [] and ev.calls == []
    # Gated DeltaNet's cell evaluated elsewhere (results carried from another lease): it trains nothing here, so the
    # card's refusal does not stop the grid
    gdn = plan_grid(g)[1]
    gdn.eval_dir.mkdir(parents=True)
    (gdn.eval_dir / "results.json").write_text(json.dumps({"meta": {"complete": True}, "rows": [], "fidelity": []}))
    runner.check_mixers_train_here(g)


def test_results_carried_without_their_students_train_nothing_again(write_grid, fakes, quiz):
    """A lease's collected results keep every stage run's metrics and every evaluation, not the students
    (tools/device_sweep.sh collect). Unpacked into the grid folder on the next machine they finish their cells: the
    grid trains only what a cell still to evaluate needs, retraining a shared prefix whose student is gone."""
    trainer, ev = fakes
    grid = write_grid({"masking": ["completion_only", "all_tokens"]}, eval=quiz)
    first = run_grid(load_grid(grid), teacher=object(), tokenizer=object(), progress="none")
    report = json.loads(Path(first["report"]["json"]).read_text())
    assert len(trainer.calls) == 4 and len(ev.calls) == 2
    for p in plan_grid(load_grid(grid)):  # what collect leaves out
        for n in p.nodes:
            shutil.rmtree(n.student_dir, ignore_errors=True)

    plan = describe_plan(plan_grid(load_grid(grid)))
    assert all(c["skipped"] for c in plan["cells"]) and plan["nodes_to_train"] == 0 and plan["tokens_to_train"] == 0
    assert plan["nodes_not_needed"] == plan["distinct_nodes"] == 4 and plan["nodes_done"] == 0
    assert {n["status"] for c in plan["cells"] for n in c["nodes"]} == {"not needed"}
    again = run_grid(load_grid(grid), teacher=object(), tokenizer=object(), progress="none")
    assert len(trainer.calls) == 4 and len(ev.calls) == 2  # nothing trained or evaluated again
    assert all(c["complete"] and not c["student_kept"] for c in again["cells"])
    rerun = json.loads(Path(again["report"]["json"]).read_text())
    assert rerun["axes"] == report["axes"] and rerun["evaluated"] == report["evaluated"] == 2

    # a new cell on the same base: its chain (stage 1 and 3a shared with the evaluated cells, their students gone)
    # is trained, the evaluated cells are not
    grid = write_grid({"masking": ["completion_only", "all_tokens"], "freeze": ["attention", "none"]}, eval=quiz)
    plan = describe_plan(plan_grid(load_grid(grid)))
    assert [c["skipped"] for c in plan["cells"]] == [True, True, True, False] and plan["nodes_to_train"] == 3
    assert plan["nodes_not_needed"] == 2  # the evaluated cells' own stage-3b runs
    assert [n["status"] for n in plan["cells"][3]["nodes"]] == ["retrain", "retrain", "todo"]
    run_grid(load_grid(grid), teacher=object(), tokenizer=object(), progress="none")
    assert [c["stage"] for c in trainer.calls[4:]] == ["stage1", "stage3a", "stage3b"] and len(ev.calls) == 3
    # the carried stage runs start over in a cleared folder (the real trainer would stop at the missing student
    # and append to the earlier lease's records otherwise); the new one is a plain first run
    assert [(c["resume"], c["overwrite"]) for c in trainer.calls[4:]] == [(False, True), (False, True), (True, False)]
    s1 = plan_grid(load_grid(grid))[3].nodes[0]
    assert s1.status() == "done" and json.loads((s1.dir / "node.json").read_text())["id"] == s1.id
