"""The evaluation result cache (:mod:`gendistill.eval.result_cache`): a second run of the same evaluation takes every
(model, task, protocol) result from the cache and writes the same files; any change to what determines a result
misses; ``--no-cache`` neither reads nor writes; a damaged entry is a miss with one warning line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from gendistill.cli import app
from gendistill.eval import runner as eval_runner
from gendistill.eval.api import evaluate
from gendistill.eval.result_cache import tokenizer_hash, weights_hash
from tests.eval.conftest import MC_ROWS, QA_ROWS, write_jsonl
from tests.fixtures_teachers import make_tiny_folder, tiny_model, tiny_tokenizer

#: fields of a row that time the work (a recomputation measures them again)
TIMING = ("seconds", "throughput")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resultcache")
    teacher, other = root / "teacher", root / "other"
    make_tiny_folder(teacher, "llama", seed=0)
    make_tiny_folder(other, "llama", seed=1)
    mc = write_jsonl(root / "quiz.jsonl", MC_ROWS)
    qa = write_jsonl(root / "qa.jsonl", QA_ROWS)
    return root, teacher, other, mc, qa


def _eval(models, tasks, out, cache_dir, **kw):
    opts = dict(max_new_tokens=4, batch_size=2, show_progress=False, cache_dir=str(cache_dir))
    opts.update(kw)
    return evaluate([str(m) for m in models], ",".join(str(t) for t in tasks), out=out, device="cpu", **opts)


def _rows(res) -> dict[tuple[str, str, str], dict]:
    return {(r["model"], r["task"], r["protocol"]): r for r in res.rows}


def _cached(res) -> set[tuple[str, str, str]]:
    return {k for k, r in _rows(res).items() if r.get("cached")}


def _example_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "examples").glob("*.jsonl"))}


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.json"))


def _no_scoring(monkeypatch):
    """Any log-likelihood or generation run fails the test: every result must come from the cache."""
    def fail(*a, **k):
        raise AssertionError("scored although the result is cached")
    monkeypatch.setattr(eval_runner, "run_loglik", fail)
    monkeypatch.setattr(eval_runner, "run_generate", fail)


def test_second_run_hits_everything_and_writes_the_same_files(setup, tmp_path, capsys, monkeypatch):
    root, teacher, other, mc, qa = setup
    cache = tmp_path / "cache"
    first = _eval([teacher, other], [mc, qa], tmp_path / "a", cache)
    keys = set(_rows(first))
    assert len(keys) == 8 and not _cached(first)
    assert len(_entries(cache)) == 8
    assert "cached" not in capsys.readouterr().err

    with monkeypatch.context() as mp:
        _no_scoring(mp)
        second = _eval([teacher, other], [mc, qa], tmp_path / "b", cache)
    assert _cached(second) == keys
    err = capsys.readouterr().err
    for model, task, protocol in keys:  # one log line per model, task and protocol
        assert err.count(f"{model} {task} {protocol}: cached") == 1, err
    # the same rows (original timings included) but the mark, the same comparisons, fidelity and example files
    assert {k: {f: v for f, v in r.items() if f != "cached"} for k, r in _rows(second).items()} == _rows(first)
    for part in ("comparisons", "fidelity", "skipped"):
        assert second.raw[part] == first.raw[part]
    assert _example_files(tmp_path / "b") == _example_files(tmp_path / "a")
    assert len(_entries(cache)) == 8  # a hit writes nothing

    # --no-cache: scored again (same results but the timings), nothing read or written
    third = _eval([teacher, other], [mc, qa], tmp_path / "c", cache, cache=False)
    assert not _cached(third)
    assert {k: {f: v for f, v in r.items() if f not in TIMING} for k, r in _rows(third).items()} == \
        {k: {f: v for f, v in r.items() if f not in TIMING} for k, r in _rows(first).items()}
    assert _example_files(tmp_path / "c") == _example_files(tmp_path / "a")
    assert "cached" not in capsys.readouterr().err


def test_a_run_that_writes_the_cache_writes_what_an_uncached_run_writes(setup, tmp_path):
    root, teacher, other, mc, qa = setup
    cached = _eval([teacher], [mc, qa], tmp_path / "a", tmp_path / "cache")
    plain = _eval([teacher], [mc, qa], tmp_path / "b", tmp_path / "unused", cache=False)
    assert not (tmp_path / "unused").exists()  # --no-cache: not even the folder
    strip = lambda res: {k: {f: v for f, v in r.items() if f not in TIMING} for k, r in _rows(res).items()}  # noqa: E731
    assert strip(cached) == strip(plain)
    assert _example_files(tmp_path / "a") == _example_files(tmp_path / "b")


def test_the_same_weights_elsewhere_hit_under_their_own_label(setup, tmp_path, monkeypatch):
    root, teacher, other, mc, qa = setup
    _eval([teacher], [mc], tmp_path / "a", tmp_path / "cache")
    moved = tmp_path / "moved" / "renamed"
    shutil.copytree(teacher, moved)
    monkeypatch.setattr(eval_runner, "run_loglik", lambda *a, **k: pytest.fail("scored again"))
    monkeypatch.setattr(eval_runner, "run_generate", lambda *a, **k: pytest.fail("scored again"))
    res = _eval([moved], [mc], tmp_path / "b", tmp_path / "cache")
    assert _cached(res) == {("renamed", "quiz", "loglik"), ("renamed", "quiz", "generate")}
    for f in (tmp_path / "b" / "examples").glob("*.jsonl"):
        assert {json.loads(x)["model"] for x in f.read_text().splitlines()} == {"renamed"}


def _nudge_one_weight(folder: Path) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, path, metadata={"format": "pt"})


def _scored_ids(out: Path, model: str, task: str) -> list[str]:
    path = out / "examples" / f"{model}__{task}__loglik.jsonl"
    return [json.loads(x)["id"] for x in path.read_text().splitlines()]


def _edit_question(path: Path, selected: bool, ids: list[str]) -> None:
    """Edit the question of one example that is (or is not) among ``ids``."""
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    next(r for r in rows if (r["id"] in ids) == selected)["question"] += " (edited)"
    write_jsonl(path, rows)


@pytest.mark.parametrize("change", ["weight", "seed", "limit", "max_new_tokens", "task_data", "chat_template",
                                    "rope_scaling"])
def test_a_change_that_matters_misses(setup, tmp_path, change):
    root, teacher, other, mc, qa = setup
    model, quiz = tmp_path / "model", tmp_path / "quiz.jsonl"
    shutil.copytree(teacher, model)
    shutil.copy(mc, quiz)
    base = dict(limit=5, seed=0, max_new_tokens=4)
    _eval([model], [quiz, qa], tmp_path / "a", tmp_path / "cache", **base)
    kw = dict(base)
    if change == "weight":
        _nudge_one_weight(model)
    elif change == "task_data":
        _edit_question(quiz, True, _scored_ids(tmp_path / "a", "model", "quiz"))
    elif change == "chat_template":
        tmpl = model / "chat_template.jinja"
        if tmpl.is_file():
            tmpl.write_text(tmpl.read_text().replace("<|im_start|>assistant", "<|im_start|>bot"))
        else:
            cfg = json.loads((model / "tokenizer_config.json").read_text())
            cfg["chat_template"] = cfg["chat_template"].replace("<|im_start|>assistant", "<|im_start|>bot")
            (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    else:
        kw[change] = {"seed": 1, "limit": 4, "max_new_tokens": 3, "rope_scaling": "linear:2"}[change]
    res = _eval([model], [quiz, qa], tmp_path / "b", tmp_path / "cache", **kw)
    everything = set(_rows(res))
    missed = everything - _cached(res)
    if change == "max_new_tokens":  # generation only: log-likelihood does not depend on it
        assert missed == {k for k in everything if k[2] == "generate"}
    elif change == "task_data":  # only the edited task
        assert missed == {k for k in everything if k[1] == "quiz"}
    else:
        assert missed == everything


@pytest.mark.parametrize("samples", [0, 2])
def test_the_batch_settings_and_the_engine_are_keyed(setup, tmp_path, samples):
    """In bf16 on a GPU the batch composition changes the round-off (and a long greedy generation can take another
    token), and seeded sampling draws one stream across a batch: another --batch-size misses generation only,
    another --token-budget log-likelihood only, another --engine both."""
    root, teacher, other, mc, qa = setup
    _eval([teacher], [mc], tmp_path / "a", tmp_path / "cache", samples=samples, batch_size=2, token_budget=256)
    res = _eval([teacher], [mc], tmp_path / "b", tmp_path / "cache", samples=samples, batch_size=3, token_budget=256)
    assert _cached(res) == {k for k in _rows(res) if k[2] == "loglik"}
    res = _eval([teacher], [mc], tmp_path / "c", tmp_path / "cache", samples=samples, batch_size=2, token_budget=64)
    assert _cached(res) == {k for k in _rows(res) if k[2] == "generate"}
    res = _eval([teacher], [mc], tmp_path / "d", tmp_path / "cache", samples=samples, batch_size=2, token_budget=256,
                engine="reference")
    assert _cached(res) == set()


def test_task_data_edit_outside_the_selection_still_hits(setup, tmp_path):
    """The key hashes the examples scored (and their few-shot examples), not the whole file."""
    root, teacher, other, mc, qa = setup
    quiz = tmp_path / "quiz.jsonl"
    shutil.copy(mc, quiz)
    _eval([teacher], [quiz], tmp_path / "a", tmp_path / "cache", limit=3, seed=0)
    _edit_question(quiz, False, _scored_ids(tmp_path / "a", "teacher", "quiz"))
    res = _eval([teacher], [quiz], tmp_path / "b", tmp_path / "cache", limit=3, seed=0)
    assert _cached(res) == set(_rows(res))


def test_damaged_entries_are_misses_with_one_warning_each_and_are_replaced(setup, tmp_path, capsys):
    root, teacher, other, mc, qa = setup
    cache = tmp_path / "cache"
    _eval([teacher], [mc], tmp_path / "a", cache)
    entries = _entries(cache)
    assert len(entries) == 2
    entries[0].write_text('{"format": "gendistill-eval-cache", "key": "tru')  # cut off
    other_entry = json.loads(entries[1].read_text())
    other_entry["key"] = "0" * 64  # a valid entry in the wrong place
    entries[1].write_text(json.dumps(other_entry))
    capsys.readouterr()
    res = _eval([teacher], [mc], tmp_path / "b", cache)
    assert not _cached(res)
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 2 and all("eval cache entry" in w and "scoring again" in w for w in warnings), warnings
    assert _example_files(tmp_path / "b") == _example_files(tmp_path / "a")
    again = _eval([teacher], [mc], tmp_path / "c", cache)  # rewritten by the run that missed
    assert _cached(again) == set(_rows(again))


def test_an_unwritable_cache_warns_once_and_the_run_completes(setup, tmp_path, capsys, monkeypatch):
    root, teacher, other, mc, qa = setup

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("gendistill.eval.result_cache.atomic_write_json", full)
    res = _eval([teacher], [mc, qa], tmp_path / "a", tmp_path / "cache")
    assert len(res.rows) == 4 and not _cached(res)
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert warnings == [f"warning: cannot write the eval cache in {tmp_path / 'cache'} (No space left on device); "
                        "results are not cached"]


def test_weights_hash_sees_one_changed_element_in_any_dtype():
    tok = tiny_tokenizer()
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model("llama", len(tok), seed=0).to(dtype)
        before = weights_hash(model)
        assert weights_hash(tiny_model("llama", len(tok), seed=0).to(dtype)) == before  # deterministic
        with torch.no_grad():
            w = dict(model.named_parameters())["model.layers.1.mlp.down_proj.weight"].view(-1)
            w[17] = torch.nextafter(w[17].float(), torch.tensor(10.0)).to(dtype) if dtype == torch.float32 else \
                w[17] + 1  # float32: the next representable number (one ulp)
        assert weights_hash(model) != before


def test_model_fingerprint_sees_the_generation_end_of_sequence_ids():
    """Generated answers end at the generation config's end-of-sequence ids: another id is another result."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from gendistill.eval.result_cache import model_fingerprint

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    a = model_fingerprint(m, None)
    m.generation_config.eos_token_id = [2, 7]
    assert model_fingerprint(m, None) != a


def test_tokenizer_hash_sees_the_chat_template_and_the_vocabulary():
    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert tokenizer_hash(a) == tokenizer_hash(b)
    b.chat_template = b.chat_template.replace("assistant", "bot")
    assert tokenizer_hash(a) != tokenizer_hash(b)
    assert tokenizer_hash(tiny_tokenizer(vocab_size=290)) != tokenizer_hash(a)


def test_cli_options(setup, tmp_path):
    root, teacher, other, mc, qa = setup
    runner = CliRunner()
    help_text = runner.invoke(app, ["eval", "--help"], terminal_width=200).output
    assert "--no-cache" in help_text and "--cache-dir" in help_text
    base = ["eval", "-m", str(teacher), "--tasks", str(mc), "--max-new-tokens", "3", "--no-progress", "--threads", "1"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert len(_entries(tmp_path / "c")) == 2
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--cache-dir", str(tmp_path / "c"), "--no-cache"])
    assert r.exit_code == 0, r.output
    assert not any(row.get("cached") for row in json.loads((tmp_path / "b" / "results.json").read_text())["rows"])
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "d"), "--cache-dir", str(a_file)])
    assert r.exit_code != 0 and "--cache-dir" in r.output and "not a folder" in r.output
    assert a_file.read_text() == "mine" and not (tmp_path / "d" / "results.json").exists()
