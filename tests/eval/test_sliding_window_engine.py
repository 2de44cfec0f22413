"""A model with sliding-window attention (a Qwen2 config with ``use_sliding_window=True``) cannot decode on the fast
engine's static cache: its dynamic cache keeps only the last ``window - 1`` keys. ``--engine auto`` must then give
exactly the reference engine's tokens (it falls back to ``model.generate``, warning once), an explicit
``--engine fast`` is refused with one line naming the setting (running another engine than asked would be silent), and
a model without a window (or whose window is switched off for every layer) keeps the fast path.

Prompt plus output is longer than the window in every test here, which is where the static copy went wrong (the
review's probe: max |dlogit| 0.23, different tokens from step 3)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from typer.testing import CliRunner

from gendistill.cli import app
from gendistill.errors import ConfigError
from gendistill.eval import generate as G
from gendistill.eval.prompts import apply_chat
from tests.eval.conftest import QA_ROWS, write_jsonl
from tests.eval.test_generate import PROMPTS
from tests.fixtures_teachers import make_tiny_folder, tiny_model

WINDOW = 6
SLIDING = dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0)
MAX_NEW = 12


def _model(tok, **overrides):
    model = tiny_model("qwen2", len(tok), seed=0, **overrides)
    with torch.no_grad():  # argmax decisions far from ties (as conftest's _sharpen)
        model.get_output_embeddings().weight.mul_(8.0)
    return model


def _prompts(tok):
    prompts = [apply_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    assert min(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts) > WINDOW
    return prompts


def _tokens(outs):
    return [o.token_ids for o in outs]


def test_auto_gives_exactly_the_reference_tokens_for_a_sliding_window_model(tok):
    model, prompts = _model(tok, **SLIDING), _prompts(tok)
    ref, _ = G.generate(model, tok, prompts, max_new_tokens=MAX_NEW, batch_size=3, engine="reference",
                        show_progress=False)
    with pytest.warns(UserWarning, match=rf"sliding-window attention \(use_sliding_window=True, "
                                         rf"sliding_window={WINDOW}.*2 of 2 layers\).*reference engine") as caught:
        auto, stats = G.generate(model, tok, prompts, max_new_tokens=MAX_NEW, batch_size=3, engine="auto",
                                 show_progress=False)
    assert len([w for w in caught if "sliding" in str(w.message)]) == 1
    assert stats.extra["engine"] == "reference"
    assert _tokens(auto) == _tokens(ref)
    assert max(len(t) for t in _tokens(ref)) == MAX_NEW  # decoding went well past the window


def test_explicit_fast_engine_is_refused_for_a_sliding_window_model(tok):
    model = _model(tok, **SLIDING)
    with pytest.raises(ConfigError, match=rf"sliding_window={WINDOW}.*use --engine reference \(or auto\)"):
        G.generate(model, tok, _prompts(tok)[:2], max_new_tokens=4, engine="fast", show_progress=False)
    # sampling never took the fast engine: no warning, no error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert G.resolve_engine("auto", do_sample=True, config=model.config) == "reference"


@pytest.mark.parametrize("overrides", [{}, dict(SLIDING, max_window_layers=2)],
                         ids=["no-window", "window-on-no-layer"])
def test_a_model_without_sliding_layers_keeps_the_fast_path(tok, overrides):
    model, prompts = _model(tok, **overrides), _prompts(tok)
    ref, _ = G.generate(model, tok, prompts, max_new_tokens=MAX_NEW, batch_size=3, engine="reference",
                        show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto, stats = G.generate(model, tok, prompts, max_new_tokens=MAX_NEW, batch_size=3, engine="auto",
                                 show_progress=False)
    assert stats.extra["engine"] == "fast"
    assert _tokens(auto) == _tokens(ref)


def test_eval_command_on_a_sliding_window_teacher(tmp_path):
    teacher = tmp_path / "teacher"
    make_tiny_folder(teacher, "qwen2", seed=0, **SLIDING)
    qa = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    runner = CliRunner()
    common = ["eval", "-m", str(teacher), "--tasks", str(qa), "--protocol", "generate", "--max-new-tokens", "8",
              "--no-progress", "--threads", "1"]

    r = runner.invoke(app, [*common, "--out", str(tmp_path / "auto")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "auto" / "results.json").read_text())["rows"]
    assert [row["throughput"]["engine"] for row in rows] == ["reference"]

    r = runner.invoke(app, [*common, "--engine", "fast", "--out", str(tmp_path / "fast")])
    assert r.exit_code != 0
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"sliding_window={WINDOW}" in errors[0] and "--engine reference" in errors[0], r.output
