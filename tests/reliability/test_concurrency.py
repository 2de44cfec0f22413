"""Issue 31, "two distill runs into one run.output_dir corrupt it": a folder being written is locked for the run's life
(src/gendistill/runlock.py). A second distill -- plain, --overwrite or --resume -- into a running run is one line
naming the running process, and the first run finishes exactly as if alone; a run that takes the folder while
another was still loading is refused under the lock before anything is written; under a launcher every rank stops
with the same line; a killed holder frees the folder; select-layers and ablate lock their folders too."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from gendistill.runlock import LOCK, FolderBusyError, acquire, check_not_busy
from tests.reliability.conftest import (assert_one_line_error, assert_same_student, cli, metric_steps, tree,
                                        write_recipe)


class PausedRun:
    """``gendistill distill ARGS`` in a forked child that stops inside its ``n``-th optimizer step until released."""

    def __init__(self, args: list[str], n: int):
        reached_r, reached_w = os.pipe()
        go_r, go_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child: never returns
            code = 3
            try:
                os.close(reached_r)
                os.close(go_w)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
                calls, orig = [], torch.optim.AdamW.step

                def step(opt, *a, **k):
                    calls.append(1)
                    if len(calls) == n:
                        os.write(reached_w, b"x")
                        os.read(go_r, 1)
                    return orig(opt, *a, **k)

                torch.optim.AdamW.step = step
                from gendistill.cli import app

                app(args, prog_name="gendistill", standalone_mode=False)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 3
            finally:
                os._exit(code)
        os.close(reached_w)
        os.close(go_r)
        self._go = go_w
        ready, _, _ = select.select([reached_r], [], [], 120)
        assert ready, "the first run never reached its pause point"
        os.close(reached_r)

    def finish(self) -> int:
        os.write(self._go, b"x")
        os.close(self._go)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def test_a_second_distill_into_a_running_run_is_one_line_and_the_first_finishes_intact(
        tmp_path, teacher_dir, data_dir, reference_run):
    recipe = write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, tmp_path / "run")
    run = tmp_path / "run"
    torch.set_num_threads(1)  # the reference run's setting: the student must equal it bit for bit
    first = PausedRun(["distill", str(recipe)], n=5)  # paused inside stage3a's 3rd step, checkpoint at 2 written
    try:
        before = tree(run)
        for flags in ([], ["--overwrite"], ["--resume"]):
            res = cli("distill", recipe, *flags)
            assert_one_line_error(res, "run.output_dir", str(run), f"is in use by gendistill process {first.pid}")
            assert tree(run) == before, flags  # not a byte of the running run changed
    finally:
        code = first.finish()
    assert code == 0
    assert_same_student(run / "stage3a", reference_run / "stage3a")
    assert metric_steps(run) == metric_steps(reference_run)  # each step once: no second writer interleaved
    assert cli("distill", recipe, "--resume").code == 0  # the lock went with the process


def test_a_run_locked_while_this_one_was_loading_is_refused_before_anything_is_written(
        tmp_path, monkeypatch, teacher_dir, data_dir):
    """Both runs passed the early check; the other one took the folder first (here: while this one read its data)."""
    import gendistill.distill.pipeline as pipeline

    run = tmp_path / "run"
    held = []
    real = pipeline.validate_data

    def validate_while_another_starts(recipe, tokenizer):
        held.append(acquire(run, "other run"))  # another open file description: another process, for flock
        return real(recipe, tokenizer)

    monkeypatch.setattr(pipeline, "validate_data", validate_while_another_starts)
    res = cli("distill", write_recipe(tmp_path / "r.yaml", teacher_dir, data_dir, run))
    assert_one_line_error(res, "run.output_dir", f"is in use by gendistill process {os.getpid()}")
    assert [p.name for p in run.iterdir()] == [LOCK]  # only the other run's lock: this one wrote nothing
    held[0].release()


def test_a_killed_holder_frees_the_folder(tmp_path):
    pid = os.fork()
    if pid == 0:
        acquire(tmp_path / "run", "run.output_dir")
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    check_not_busy(tmp_path / "run", "run.output_dir")
    with acquire(tmp_path / "run", "run.output_dir") as lock:
        assert lock.held
        with pytest.raises(FolderBusyError, match="in use by gendistill process"):
            check_not_busy(tmp_path / "run", "run.output_dir")


def _rank(rank: int, port: int, run: str, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0")
    import torch.distributed as dist

    from gendistill.distill.distributed import init_world
    from gendistill.distill.pipeline import lock_run_folder
    from gendistill.errors import GendistillError

    world = init_world("cpu")
    try:
        lock_run_folder(None, Path(run), world, resume=False, overwrite=False, progress={"completed": []},
                        allow_optim_change=False)
        msg = "locked"
    except GendistillError as e:
        msg = f"error: {e}"
    Path(f"{result}.{rank}").write_text(msg)
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_under_a_launcher_rank_0_locks_and_every_rank_stops_with_its_line(tmp_path):
    run = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with acquire(run, "another run"):
        mp.start_processes(_rank, args=(port, str(run), str(tmp_path / "result")), nprocs=2, join=True,
                           start_method="fork")  # the modules are loaded already: no second start-up
    lines = [(tmp_path / f"result.{r}").read_text() for r in (0, 1)]
    assert lines[0] == lines[1] and "is in use by gendistill process" in lines[0], lines


def test_select_layers_and_ablate_lock_their_folders(tmp_path, monkeypatch):
    from gendistill.select import SelectConfig, select_layers

    from tests.distill._distill_helpers import _train_tokenizer, tiny_llama

    tok = _train_tokenizer()
    teacher = tiny_llama(len(tok), layers=4, hidden=32)
    cfg = SelectConfig(teacher="t", method="uniform", budget=1, output_dir=str(tmp_path / "sel"))
    with acquire(tmp_path / "sel", "another run"):
        with pytest.raises(FolderBusyError, match="--out: .* is in use by gendistill process"):
            select_layers(cfg, teacher=teacher, tokenizer=tok, progress="none")
    assert [p.name for p in (tmp_path / "sel").iterdir()] == [LOCK]  # no select.json, no layers.json
    assert select_layers(cfg, teacher=teacher, tokenizer=tok, progress="none")["attention_layers"]

    import yaml

    from tests.ablate.conftest import base_recipe

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base_recipe()))
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer_idx": 1}\n')
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": "base.yaml", "output_dir": str(tmp_path / "grid"),
                                    "axes": {"masking": ["completion_only"]}, "eval": {"tasks": str(quiz)}}))
    with acquire(tmp_path / "grid", "another run"):
        for flags in ([], ["--report-only"]):
            assert_one_line_error(cli("ablate", grid, *flags), "output_dir", "is in use by gendistill process")
    assert [p.name for p in (tmp_path / "grid").iterdir()] == [LOCK]


@contextlib.contextmanager
def held_by_another_process(folder: Path):
    """``folder``'s lock (:func:`acquire`) held by a forked child until the block ends; yields the child's pid. Fails
    when the child cannot take it (a run that should have released the folder still holds it)."""
    took_r, took_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 3
        try:
            os.close(took_r)
            os.close(go_w)
            acquire(folder, "another run")
            os.write(took_w, b"x")
            os.read(go_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(took_w)
    os.close(go_r)
    try:
        ready, _, _ = select.select([took_r], [], [], 60)
        assert ready and os.read(took_r, 1) == b"x", f"another process could not lock {folder}"
        yield pid
    finally:
        os.close(took_r)
        os.write(go_w, b"x")
        os.close(go_w)
        os.waitpid(pid, 0)


def _busy(folder: Path) -> bool:
    try:
        check_not_busy(folder, "probe")
    except FolderBusyError:
        return True
    return False


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_eval_and_bench_hold_their_folder_and_refuse_a_busy_one(tmp_path, monkeypatch, teacher_dir, command):
    """A run holds ``--out`` while it writes and frees it when it ends; a run into a folder another process holds is
    one line naming that process, and changes nothing in the folder; once the holder is gone the run works."""
    out = tmp_path / "out"
    if command == "eval":
        quiz = tmp_path / "quiz.jsonl"
        quiz.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer_idx": 1}\n')
        args = ["eval", "-m", teacher_dir, "--tasks", quiz, "--protocol", "loglik", "--no-progress", "--threads", "1"]
        import gendistill.eval.report as writer

        where = "write_report"
    else:
        args = ["bench", "--tiny", "--skip", "ttft,decode,throughput"]
        from gendistill.bench.runner import Runner as writer

        where = "save"
    seen, real = [], getattr(writer, where)

    def write_and_look(*a, **k):
        seen.append(_busy(out))  # another process's view while this run writes
        return real(*a, **k)

    monkeypatch.setattr(writer, where, write_and_look)
    assert cli(*args, "--out", out).code == 0
    assert seen and all(seen), seen
    with held_by_another_process(out) as pid:  # the finished run let go of the folder
        before = tree(out)
        assert_one_line_error(cli(*args, "--out", out), "--out", str(out), f"is in use by gendistill process {pid}")
        assert tree(out) == before
    assert cli(*args, "--out", out).code == 0


def test_eval_refuses_a_busy_folder_before_anything_is_written(tmp_path, teacher_dir):
    """Into a new folder another process has just taken, and ``--merge`` into a held folder: one line, the folder
    holds nothing but the other process's lock file."""
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer_idx": 1}\n')
    assert cli("eval", "-m", teacher_dir, "--tasks", quiz, "--protocol", "loglik", "--no-progress", "--out",
               tmp_path / "a").code == 0
    for out, args in ((tmp_path / "new", ["-m", teacher_dir, "--tasks", quiz, "--no-progress"]),
                      (tmp_path / "merged", ["--merge", tmp_path / "a"])):
        with held_by_another_process(out) as pid:
            assert_one_line_error(cli("eval", *args, "--out", out), "--out", f"is in use by gendistill process {pid}")
            assert [p.name for p in out.iterdir()] == [LOCK]
    assert cli("eval", "--merge", tmp_path / "a", "--out", tmp_path / "merged").code == 0
    assert (tmp_path / "merged" / "results.json").is_file()
