"""GPU check (skipped without CUDA; not yet run on a GPU): ``gendistill eval`` on the long-context tasks runs batched on
CUDA for a tiny teacher and its hybrid student (fla kernels), with --rope-scaling, and batched greedy generation at 1–2K
tokens gives the batch-of-one tokens for the teacher."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)")]


def test_ruler_eval_batched_on_cuda(tmp_path):
    from gendistill.convert.convert import convert_teacher
    from gendistill.eval.generate import generate
    from gendistill.eval.ruler import LongContextSpec
    from gendistill.eval.config import EvalConfig
    from gendistill.eval.runner import load_model, run_eval
    from gendistill.eval.tasks import get_task
    from tests.fixtures_teachers import make_tiny_folder

    teacher, tok = make_tiny_folder(tmp_path / "teacher", "llama", seed=0, max_position_embeddings=2048)
    convert_teacher(teacher, [0]).save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    cfg = EvalConfig(models=[str(tmp_path / "teacher"), str(tmp_path / "student")],
                     tasks="ruler_niah_single_2,ruler_vt", limit=4, batch_size=4, token_budget=16384,
                     max_new_tokens=8, device="cuda", context_lengths=[1024, 2048], depths=[0.0, 1.0],
                     rope_scaling="yarn:2", out=str(tmp_path / "out"), show_progress=False)
    res = run_eval(cfg)
    rows = {(r["task"], r["model"], r["protocol"]): r for r in res["rows"]}
    assert len(rows) == 8 and all(r["n"] == 8 for r in rows.values())
    assert all(r["throughput"]["batches"] == 2 for k, r in rows.items() if k[2] == "generate")
    assert res["meta"]["rope_scaling"]["student"]["rope_type"] == "yarn"
    recs = [json.loads(x) for x in (tmp_path / "out" / "examples" / "student__ruler_vt__generate.jsonl")
            .read_text().splitlines()]
    assert all(r["prompt_tokens"] <= r["length"] for r in recs)

    model, tok = load_model(str(tmp_path / "teacher"), device="cuda")
    task = get_task("ruler_niah_single_2")
    exs = task.build(tok, LongContextSpec(lengths=(1024, 2048), depths=(0.5,)), 2, 0, 8)
    prompts = [task.generation_prompt(tok, e, []) for e in exs]
    batched, _ = generate(model, tok, prompts, max_new_tokens=8, batch_size=4, show_progress=False)
    single, _ = generate(model, tok, prompts, max_new_tokens=8, batch_size=1, show_progress=False)
    assert [o.token_ids for o in batched] == [o.token_ids for o in single]
