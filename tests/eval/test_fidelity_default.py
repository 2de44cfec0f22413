"""``--fidelity-chat``'s default conversations are ones no shipped recipe trains on: the first
:data:`DEFAULT_CHAT_HELDOUT` of ``sft_mix`` in file order, which the trainer's :class:`SourceReader` holds out of every
shipped recipe and grid cell that distills on sft_mix. A larger count is refused unless the user names the data."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import gendistill
from gendistill.ablate.grid import load_grid
from gendistill.cli import app
from gendistill.distill.data.streaming import SourceReader
from gendistill.distill.recipe_files import load_recipe
from gendistill.errors import ConfigError
from gendistill.eval.config import EvalConfig, check_numbers
from gendistill.eval.fidelity import DEFAULT_CHAT_FILE, DEFAULT_CHAT_HELDOUT, load_chat_heldout
from gendistill.io import data_dir


def _sft_mix_sources():
    """``(name, data config, source config)`` of every stage that reads sft_mix, in every shipped recipe and in every
    cell of every shipped grid."""
    out = []
    for path in sorted((Path(gendistill.__file__).parent / "recipes").glob("*.yaml")):
        recipes = ([c.recipe for c in load_grid(path).cells] if "axes" in yaml.safe_load(path.read_text())
                   else [load_recipe(path)])
        for r in recipes:
            for st in r.stages:
                data = r.stage_data(st)
                for src in data.sources:
                    if Path(src.path).name == DEFAULT_CHAT_FILE:
                        out.append((f"{path.stem}/{st.name}", data, src))
    return out


def test_default_count_is_the_smallest_holdout_of_the_shipped_recipes():
    sources = _sft_mix_sources()
    names = {n.split("/")[0] for n, _, _ in sources}
    assert {"smollm2-135m", "smollm2-135m-lease", "tiny-cpu"} <= names
    # every one holds out at least the default rows, and the default is not needlessly small
    assert DEFAULT_CHAT_HELDOUT == min(d.heldout_documents for _, d, _ in sources)


def _key(messages) -> str:
    return json.dumps(messages, sort_keys=True)


@pytest.mark.skipif(data_dir() is None or not (data_dir() / DEFAULT_CHAT_FILE).is_file(),
                    reason="needs ../shared/data/sft_mix.jsonl.gz (or GENDISTILL_DATA_DIR)")
def test_default_rows_are_the_trainers_heldout_head():
    default = [_key(m) for m in load_chat_heldout(None, DEFAULT_CHAT_HELDOUT)]
    assert len(default) == DEFAULT_CHAT_HELDOUT == len(set(default))
    seen = set()
    for name, data, src in _sft_mix_sources():
        key = (src.path, src.limit, data.heldout_documents)
        if key in seen:
            continue
        seen.add(key)
        reader = SourceReader(src, 0, data)
        head = [_key(rec[src.messages_field]) for _, rec in reader.heldout()]
        assert head[:DEFAULT_CHAT_HELDOUT] == default, name
    # and the trainer never draws them: one full epoch of the smallest held-out source (tiny-cpu: 296 records)
    name, data, src = min(_sft_mix_sources(), key=lambda x: x[1].heldout_documents)
    reader = SourceReader(src, 0, data)
    n_train = sum(1 for _ in reader.records_for_validation()) - len(reader.heldout())  # head + the rest
    trained = {_key(rec[src.messages_field]) for _, rec in islice(reader.iter_from(0), n_train)}
    assert len(trained) > 0 and not trained & set(default), name


def test_more_default_rows_than_held_out_is_refused():
    with pytest.raises(ConfigError, match="--fidelity-chat: .*--fidelity-data.*--fidelity-heldout"):
        check_numbers(EvalConfig(models=[], fidelity_chat=DEFAULT_CHAT_HELDOUT + 1))
    with pytest.raises(ConfigError, match="held out"):
        load_chat_heldout(None, DEFAULT_CHAT_HELDOUT + 1)
    check_numbers(EvalConfig(models=[], fidelity_chat=DEFAULT_CHAT_HELDOUT))  # the held-out rows: fine
    check_numbers(EvalConfig(models=[], fidelity_chat=64, fidelity_data="mine.jsonl"))  # the user's data: any count


def test_cli_refuses_too_many_default_rows_before_anything_runs(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["eval", "-m", "a", "-m", "b", "--fidelity-chat", "64", "--out", str(out),
                                 "--no-progress"])
    assert r.exit_code != 0
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --fidelity-chat: 64 > "), r.output
    assert "RUN/heldout/stage3b.safetensors" in lines[0] and not out.exists()


def test_fidelity_data_gives_its_first_rows_in_file_order(tmp_path):
    path = tmp_path / "chat.jsonl"
    convs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(10)]
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    assert load_chat_heldout(path, 3) == convs[:3]
    assert load_chat_heldout(path, 50) == convs  # fewer than asked: all of them
