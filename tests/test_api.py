"""The public Python API on tiny models: gendistill.convert / distill / evaluate / bench, each with its typed result;
the sub-packages of the same names stay importable; a saved student is shareable (model card, no machine paths in
config.json, the hub upload up to the network boundary); a layer spec written by HybridConfig parses back."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml

import gendistill
from gendistill.errors import GendistillError
from tests.distill._distill_helpers import _train_tokenizer, chat_records, text_records, tiny_llama, write_jsonl
from tests.eval.conftest import MC_ROWS
from tests.eval.conftest import write_jsonl as write_rows


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("api") / "tiny-llama"
    tok = _train_tokenizer()
    tiny_llama(len(tok), seed=0, layers=4, hidden=32).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_the_api_functions_are_the_callable_sub_packages():
    import gendistill.distill.trainer as trainer  # the sub-package is still a package

    assert trainer.__name__ == "gendistill.distill.trainer"
    for name in ("convert", "distill", "bench"):
        fn = getattr(gendistill, name)
        assert callable(fn) and inspect.signature(fn) == inspect.signature(getattr(gendistill.api, name))
        assert fn.__call__ is getattr(gendistill.api, name)  # help(gendistill.convert.__call__) is the function's
    assert gendistill.evaluate is gendistill.api.evaluate and gendistill.DistillResult.__name__ == "DistillResult"
    with pytest.raises(AttributeError):
        gendistill.no_such_thing  # noqa: B018


@pytest.mark.parametrize("spec", ["0,two", "every:x", "ratio:2", "", "0,9", "missing.json"])
def test_convert_checks_the_layer_spec_before_the_teacher_loads(teacher_dir, monkeypatch, spec):
    """As its docstring says: a bad --attention-layers is one line before any weight is read (a GGUF teacher takes
    seconds to de-quantise), against the layer count in the teacher's config."""
    import gendistill.convert.api as convert_api

    monkeypatch.setattr(convert_api, "load_model", lambda *a, **k: pytest.fail("the teacher was loaded"))
    with pytest.raises(GendistillError):
        gendistill.convert(str(teacher_dir), spec, device="cpu")


def test_convert_saves_a_shareable_student(teacher_dir, tmp_path):
    res = gendistill.convert(str(teacher_dir), "0,2", tmp_path / "student", gate_activation="sigmoid",
                             device="cpu")
    assert isinstance(res, gendistill.ConvertResult) and res.out == tmp_path / "student"
    assert res.layer_spec == "attention:0,2;kda:1,3" and res.summary.attention_layers == [0, 2]
    cfg = json.loads((res.out / "config.json").read_text())
    assert cfg["teacher"] == "tiny-llama" and "_name_or_path" not in cfg
    assert not [s for s in _strings(cfg) if s.startswith(("/", "~")) or str(tmp_path) in s]
    card = (res.out / "README.md").read_text()
    for fragment in ("library_name: transformers", "tiny-llama", "`attention:0,2;kda:1,3`", "| kda_gate_activation "
                     "| sigmoid |", "import gendistill", "AutoModelForCausalLM.from_pretrained", "Not evaluated yet",
                     "no distillation recorded"):
        assert fragment in card, fragment
    model, _ = gendistill.load(res.out, device="cpu")  # and it loads back as the same model
    ids = torch.tensor([[3, 7, 11, 19]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, res.student(ids).logits, rtol=0, atol=0)
    with pytest.raises(GendistillError, match="already exists"):
        gendistill.convert(str(teacher_dir), "0", tmp_path / "student")


def test_layer_spec_round_trip(teacher_dir):
    from gendistill.convert.layer_spec import parse_attention_layers
    from gendistill.errors import LayerSpecError

    for spec in ("0,2", "every:2", "none", "all", "ratio:0.5"):
        cfg = gendistill.convert(str(teacher_dir), spec, device="cpu").student.config
        assert parse_attention_layers(cfg.layer_spec(), 4) == cfg.attention_layers
        again = gendistill.convert(str(teacher_dir), cfg.layer_spec(), device="cpu").student.config
        assert again.layer_types == cfg.layer_types
    for bad in ("attention:0,1;kda:1,2,3", "attention:0;kda:1,2", "attention:0,x;kda:1,2,3", "attention:0"):
        with pytest.raises(LayerSpecError):
            parse_attention_layers(bad, 4)


def _recipe(teacher: Path, data: Path, out: Path) -> dict:
    return {
        "teacher": {"spec": str(teacher)},
        "student": {"attention_layers": [0, 2]},
        "data": {"sources": [{"path": "text.jsonl", "format": "text"}], "heldout_documents": 4},
        "stages": [
            {"name": "stage1", "steps": 2, "seq_len": 32, "batch_size": 2, "optim": {"lr": 1e-3}},
            {"name": "stage3b", "steps": 2, "seq_len": 32, "batch_size": 2, "optim": {"lr": 1e-4},
             "data": {"sources": [{"path": "chat.jsonl", "format": "chat"}], "heldout_documents": 2}},
        ],
        "run": {"output_dir": str(out), "device": "cpu", "progress": "none", "tensorboard": False},
    }


def test_distill_returns_one_shape_and_cards_its_stages(teacher_dir, tmp_path, monkeypatch):
    """Data paths resolve in the data folder ($GENDISTILL_DATA_DIR) when they are not beside the recipe."""
    data = tmp_path / "data"
    write_jsonl(data / "text.jsonl", text_records(20))
    write_jsonl(data / "chat.jsonl", chat_records(10))
    monkeypatch.setenv("GENDISTILL_DATA_DIR", str(data))
    recipe = tmp_path / "recipes" / "mine.yaml"
    recipe.parent.mkdir()
    recipe.write_text(yaml.safe_dump(_recipe(teacher_dir, data, tmp_path / "run")))

    plan = gendistill.distill(recipe, dry_run=True)
    assert isinstance(plan, gendistill.DistillResult) and plan.dry_run and plan.completed == []
    assert [p["stage"] for p in plan.plan] == ["stage1", "stage3b"] and plan.data["stage1"]
    assert not (tmp_path / "run").exists()

    res = gendistill.distill(recipe, overrides=["stages[1].steps=3"])
    assert type(res) is type(plan) and not res.dry_run
    assert res.completed == ["stage1", "stage3b"] and res.results["stage3b"].steps == 3
    assert res.final_student_dir == tmp_path / "run" / "stage3b" and res.student is not None
    card = (res.final_student_dir / "README.md").read_text()
    assert "Recipe: `mine.yaml`" in card and "| stage3b | 3 | 192 | 32 | 2 |" in card and "Total: 320 tokens" in card
    cfg = json.loads((res.final_student_dir / "config.json").read_text())
    assert cfg["teacher"] == "tiny-llama" and not [s for s in _strings(cfg) if str(tmp_path) in s]

    monkeypatch.setenv("GENDISTILL_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(GendistillError, match=r"data.sources\[0\].path: text.jsonl is neither beside the recipe"):
        gendistill.distill(recipe, overrides=[f"run.output_dir={tmp_path / 'run2'}"], dry_run=True)


def test_evaluate_returns_rows_and_updates_the_card(teacher_dir, tmp_path):
    student = gendistill.convert(str(teacher_dir), "0,2", tmp_path / "student", device="cpu").out
    quiz = write_rows(tmp_path / "quiz.jsonl", MC_ROWS)
    res = gendistill.evaluate([str(teacher_dir), str(student)], str(quiz), out=tmp_path / "eval", limit=2,
                              update_card=True, show_progress=False, max_new_tokens=4, device="cpu")
    assert isinstance(res, gendistill.EvalResult) and res.models == ["tiny-llama", "student"]
    assert {(r["model"], r["protocol"]) for r in res.rows} == {(m, p) for m in res.models
                                                              for p in ("loglik", "generate")}
    assert 0 <= res.accuracy("student", "quiz", "loglik") <= 1 and Path(res.paths["json"]).is_file()
    assert "| quiz | loglik |" in (student / "README.md").read_text()
    assert "Not evaluated yet" not in (student / "README.md").read_text()


def test_bench_takes_a_dtype_by_any_name_and_a_model_reference(teacher_dir, tmp_path):
    """`bench --tiny --dtype bfloat16` used to raise KeyError; a teacher can be any reference (here a folder)."""
    res = gendistill.bench(tiny=True, dtype="bfloat16", out=tmp_path / "b", skip="ttft,decode,throughput",
                           plots=False, table=False)
    assert isinstance(res, gendistill.BenchResult) and res.json_path.is_file()
    assert json.loads(res.json_path.read_text())["settings"]["dtype"] == "bfloat16"
    key = "cache_measured_student_over_teacher"  # the fixed KDA state weighs less as the context grows
    assert res.ratios(128)[key] < res.ratios(32)[key]
    res = gendistill.bench(str(teacher_dir), out=tmp_path / "c", device="cpu", attention_layers="0,2", contexts="32",
                           skip="ttft,decode,throughput", plots=False, table=False, repeats=1)
    assert res.data["models"]["student"]["layer_types"] == {"full_attention": 2, "linear_attention": 2}


def test_bench_refuses_unknown_keywords_and_takes_every_setting(tmp_path):
    """A typo (`decode_token=99`) used to be dropped and the run went on with the default; settings without a command
    option (`seed`, `attn_implementation`, ...) were dropped too."""
    from gendistill.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        gendistill.bench(tiny=True, out=tmp_path / "typo", decode_token=99, warmups=2)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("unknown options decode_token (did you mean decode_tokens?), warmups (did you mean warmup?)")
    assert "valid: " in msg and "decode_tokens" in msg.split("valid: ")[1] and "seed" in msg.split("valid: ")[1]
    assert not (tmp_path / "typo").exists()  # refused before anything is written
    res = gendistill.bench(tiny=True, out=tmp_path / "b", skip="cache,ttft,decode,throughput", plots=False,
                           table=False, seed=7, attn_implementation="eager", measure_budget_s=0.5, time_limit=300)
    settings = res.data["settings"]
    assert (settings["seed"], settings["attn_implementation"], settings["measure_budget_s"],
            settings["time_limit_s"]) == (7, "eager", 0.5, 300)
    assert {m["attn_implementation"] for m in res.data["models"].values()} == {"eager"}  # what the models ran


def test_push_to_hub_uploads_the_folder_as_saved(teacher_dir, tmp_path, monkeypatch):
    """Up to the network boundary: the commit huggingface_hub would send holds the weights, config, tokenizer and
    model card, and not gendistill's local ownership marker."""
    from huggingface_hub import HfApi

    student = gendistill.convert(str(teacher_dir), "0", tmp_path / "student", device="cpu").out
    sent = {}

    class Repo:
        repo_id = "me/tiny-hybrid"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: Repo())

    def create_commit(self, repo_id, operations, **kw):
        sent["repo"], sent["files"] = repo_id, {op.path_in_repo for op in operations}
        sent["card"] = next(Path(op.path_or_fileobj).read_text() for op in operations if op.path_in_repo == "README.md")
        return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    url = gendistill.push_to_hub(student, "me/tiny-hybrid")
    assert url == "https://hub/me/tiny-hybrid/commit/1" and sent["repo"] == "me/tiny-hybrid"
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "SUMMARY.json"} <= sent["files"]
    assert ".gendistill.json" not in sent["files"] and "library_name: transformers" in sent["card"]
    with pytest.raises(GendistillError, match="not a saved gendistill student"):
        gendistill.push_to_hub(teacher_dir, "me/x")


def test_bench_command_takes_a_gguf_teacher_and_bfloat16(tmp_path):
    """The two bench failures of the issue, through the command: `--tiny --dtype bfloat16` (a KeyError before) and
    a GGUF file as --teacher (refused before: bench took folders only)."""
    from typer.testing import CliRunner

    from gendistill.cli import app
    from tests.fixtures_teachers import tiny_model, tiny_tokenizer, write_tiny_gguf

    runner = CliRunner()
    r = runner.invoke(app, ["bench", "--tiny", "--dtype", "bfloat16", "--skip", "ttft,decode,throughput", "-o",
                            str(tmp_path / "tiny")])
    assert r.exit_code == 0, r.output
    assert json.loads(next((tmp_path / "tiny").glob("bench_*.json")).read_text())["settings"]["dtype"] == "bfloat16"
    tok = tiny_tokenizer()
    gguf = write_tiny_gguf(tmp_path / "teacher.gguf", tiny_model("llama", len(tok)), tok)
    r = runner.invoke(app, ["bench", "-t", str(gguf), "--device", "cpu", "--attention-layers", "0", "--contexts", "16",
                            "--skip", "ttft,decode,throughput", "--repeats", "1", "-o", str(tmp_path / "gguf")])
    assert r.exit_code == 0, r.output
    data = json.loads(next((tmp_path / "gguf").glob("bench_*.json")).read_text())
    assert data["model"] == "teacher" and data["models"]["student"]["layer_types"]["linear_attention"] == 1


def test_transformers_own_push_to_hub_sends_a_config_without_machine_paths(teacher_dir, tmp_path, monkeypatch):
    """The student is a transformers model: its own push_to_hub (save_pretrained into a temporary folder, one hub
    commit) works, and the config.json it sends names the teacher, not a path on this machine. Mocked at the network
    boundary (repo creation, the remote model card lookup, the commit)."""
    import transformers.utils.hub as hf_hub_utils
    from huggingface_hub import HfApi, ModelCard, ModelCardData

    saved = gendistill.convert(str(teacher_dir), "0", tmp_path / "student", device="cpu").out
    student, _ = gendistill.load(saved, device="cpu")  # loaded from a folder: transformers records where from
    assert student.config.name_or_path == str(saved)
    sent = {}

    class Repo:
        repo_id = "me/tiny-hybrid"

    def create_commit(self, repo_id, operations, **kw):
        sent.update({op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations})
        return "https://hub/me/tiny-hybrid/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: Repo())
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(hf_hub_utils, "create_and_tag_model_card",
                        lambda repo_id, tags=None, token=None: ModelCard.from_template(ModelCardData(tags=tags)))
    student.push_to_hub("me/tiny-hybrid")
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(sent)
    cfg = json.loads(sent["config.json"])
    assert cfg["model_type"] == "hybrid_kda" and cfg["teacher"] == "tiny-llama"
    assert not [s for s in _strings(cfg) if s.startswith("/") or str(tmp_path) in s or str(teacher_dir) in s]
