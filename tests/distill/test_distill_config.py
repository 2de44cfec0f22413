"""The typed recipe: shipped recipes parse; unknown keys and bad values are rejected with the key's path; stage
defaults; batch arithmetic; overrides; LR schedules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gendistill.distill.config import OptimConfig, dump_recipe, parse_recipe
from gendistill.distill.recipe_files import load_recipe
from gendistill.distill.schedules import lr_factor
from gendistill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def base() -> dict:
    return {
        "teacher": {"spec": "smollm2-135m-instruct"},
        "student": {"attention_layers": "every:4"},
        "data": {"sources": [{"path": "x.jsonl", "format": "text"}]},
        "stages": [
            {"name": "stage1", "steps": 5, "seq_len": 64, "batch_size": 4, "optim": {"lr": 1e-3}},
            {"name": "stage3a", "tokens": 10_000, "seq_len": 100, "batch_size": 8, "micro_batch_size": 2,
             "optim": {"lr": 2.5e-5, "weight_decay": 0.1}},
        ],
        "run": {"output_dir": "runs/x"},
    }


@pytest.mark.parametrize("name", ["tiny-cpu.yaml", "smollm2-135m.yaml", "qwen3-0.6b-paper.yaml"])
def test_shipped_recipes_parse(name):
    r = load_recipe(name.removesuffix(".yaml"))  # shipped with the package: by name
    assert r.stages and yaml.safe_load(dump_recipe(r))["stages"][0]["name"] == r.stages[0].name


def test_paper_recipe_hyperparameters():
    r = load_recipe("qwen3-0.6b-paper")
    s3a = next(s for s in r.stages if s.name == "stage3a")
    assert s3a.optim.lr == 2.5e-5 and s3a.optim.warmup_ratio == 0.1 and s3a.optim.weight_decay == 0.1
    assert s3a.batch_size == 64 and s3a.optim.schedule == "wsd"
    assert s3a.optim.decay_ratio == 0.1 and s3a.optim.min_lr_ratio == 0.02
    assert s3a.loss.kind == "forward_kl" and s3a.loss.ce_weight == 0
    assert set(s3a.trainable.groups) == {"kda", "mlp", "norms"}
    s3b = next(s for s in r.stages if s.name == "stage3b")
    assert s3b.seq_len == 4096 and s3b.masking == "completion_only"
    assert "attention" not in s3b.trainable.groups
    assert r.student.attention_layers == [0, 2, 6, 11, 13, 18, 21]
    # the recipe is world-size independent: the accumulation adapts
    assert s3a.grad_accum_for(1) * s3a.micro_batch_size == 64
    assert s3a.grad_accum_for(8) * s3a.micro_batch_size * 8 == 64


def test_defaults_per_stage():
    r = parse_recipe(base())
    s1, s3 = r.stages
    assert s1.loss.kind == "mse" and s1.trainable.groups == ["kda"]
    assert s3.loss.kind == "forward_kl" and s3.trainable.groups == ["kda", "mlp", "norms"]
    assert s3.total_steps() == 13  # ceil(10000 / (100 * 8))


def test_defaults_of_every_stage_as_documented():
    """What a stage gets when the recipe does not say (docs/distill.md, paper Fig. 1): stages 1-2 align hidden states
    (mse) training the KDA mixers on every token; stages 3a-3b distil the logits (forward KL) training KDA, MLPs and
    norms, stage 3b on the assistant tokens only."""
    d = base()
    d["stages"] = [{"name": n, "steps": 1, "seq_len": 16, "batch_size": 2, "optim": {"lr": 1e-3}}
                   for n in ("stage1", "stage2", "stage3a", "stage3b")]
    got = [(s.name, s.loss.kind, s.masking, s.trainable.groups) for s in parse_recipe(d).stages]
    assert got == [("stage1", "mse", "all_tokens", ["kda"]), ("stage2", "mse", "all_tokens", ["kda"]),
                   ("stage3a", "forward_kl", "all_tokens", ["kda", "mlp", "norms"]),
                   ("stage3b", "forward_kl", "completion_only", ["kda", "mlp", "norms"])]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["stages"][1]["optim"].update(lrr=1), r"stages\[1\]\.optim\.lrr: unknown key"),
        (lambda d: d["stages"][0]["optim"].update(lr=-1), r"stages\[0\]\.optim\.lr: Input should be greater than 0"),
        (lambda d: d["stages"][0].update(masking="some"), r"stages\[0\]\.masking: Input should be"),
        (lambda d: d["stages"][0].update(tokens=5), r"stages\[0\]: give exactly one of 'tokens' or 'steps'"),
        (lambda d: d["stages"][0].update(loss={"kind": "forward_kl"}), r"stages\[0\]: loss\.kind 'forward_kl' is a logit"),
        (lambda d: d["stages"][1].update(loss={"kind": "mse"}), r"stages\[1\]: loss\.kind 'mse' is a hidden-state"),
        (lambda d: d["stages"].reverse(), r"stages: must run in the order"),
        (lambda d: d["data"]["sources"][0].update(format="csv"), r"data\.sources\[0\]\.format"),
        (lambda d: d["stages"][1].update(trainable={"groups": ["mlps"]}), r"stages\[1\]\.trainable\.groups\[0\]"),
        (lambda d: d["stages"][1].update(trainable={"include": ["(unclosed"]}), r"stages\[1\]\.trainable\.include: .*not a valid regex"),
        (lambda d: d.update(extra=1), r"extra: unknown key"),
        (lambda d: d["student"].update(path="x"), r"student: .*exactly one of 'path'"),
    ],
)
def test_bad_recipes_name_the_key(mutate, message):
    d = base()
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        parse_recipe(d)


@pytest.mark.parametrize("dtype, canonical", [("bf16", "bfloat16"), ("FP16", "float16"), ("fp32", "float32"),
                                              (" bfloat16 ", "bfloat16"), ("auto", "auto")])
@pytest.mark.parametrize("device, canonical_device", [("cuda:1", "cuda:1"), ("CUDA:01", "cuda:1"), ("cuda", "cuda"),
                                                      ("cpu", "cpu"), ("auto", "auto")])
def test_recipe_takes_every_device_and_dtype_a_command_line_takes(dtype, canonical, device, canonical_device):
    """teacher.dtype and run.device follow the rules of every --dtype / --device (gendistill.devices), spelling only
    (this machine has no GPU: cuda:1 is a valid recipe anywhere), and keep the canonical name, so the recipe written
    back says bfloat16 / cuda:1 whatever was typed."""
    d = base()
    d["teacher"]["dtype"], d["run"]["device"] = dtype, device
    r = parse_recipe(d)
    assert (r.teacher.dtype, r.run.device) == (canonical, canonical_device)
    again = yaml.safe_load(dump_recipe(r))
    assert (again["teacher"]["dtype"], again["run"]["device"]) == (canonical, canonical_device)
    assert parse_recipe(again) == r


def test_recipe_overrides_of_device_and_dtype_are_checked_and_canonical(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(base()))
    r = load_recipe(p, ["teacher.dtype=BF16", "run.device=cuda:3"])
    assert (r.teacher.dtype, r.run.device) == ("bfloat16", "cuda:3")
    r.run.device = "CPU"  # assignment goes through the same check
    assert r.run.device == "cpu"


@pytest.mark.parametrize("key, value, message", [
    ("teacher.dtype", "int8", "teacher.dtype: unknown dtype 'int8'; use auto, float32, fp32, bfloat16, bf16"),
    ("teacher.dtype", "bf", "teacher.dtype: unknown dtype 'bf'"),
    ("run.device", "gpu", "run.device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("run.device", "cuda:x", "run.device: expected auto, cpu, cuda or cuda:N, got 'cuda:x'"),
    ("run.device", "cuda:-1", "run.device: expected auto, cpu, cuda or cuda:N, got 'cuda:-1'"),
    ("run.device", "mps", "run.device: expected auto, cpu, cuda or cuda:N, got 'mps'"),
])
def test_recipe_refuses_a_bad_device_or_dtype_in_one_line_naming_the_key(tmp_path, key, value, message):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError) as e:
        load_recipe(p, [f"{key}={value}"])
    text = str(e.value)
    assert message in text and "\n" not in text and "Value error" not in text, text
    assert text.count(f"{key}: ") == 1, text  # named once, not by pydantic and again by the message


def test_a_cuda_index_is_one_process_s_gpu_not_a_torchrun_rank_s(monkeypatch):
    """run.device cuda:N under torchrun is refused (each rank takes its LOCAL_RANK's GPU); without CUDA, cuda:N is
    refused naming run.device. Neither needs a GPU: both are decided before any device is touched."""
    from gendistill.distill.distributed import init_world

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^run.device: cuda:1 names one GPU, but under torchrun each of the 2 "):
        init_world("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^run.device: cuda:1 requested but no CUDA device is available"):
        init_world("cuda:1")
    assert init_world("cpu").device.type == "cpu"


def test_a_mistyped_key_is_one_problem_with_the_key_it_stands_for(tmp_path):
    """A typo in a required key was two problems (the key missing, the typo unknown); it is now one, with the known
    key suggested, also for optional keys (from the recipe's schema) and for a key set with --set."""
    d = base()
    d["stages"][0]["seq_lenn"] = d["stages"][0].pop("seq_len")
    with pytest.raises(ConfigError) as err:
        parse_recipe(d, "r.yaml")
    assert str(err.value) == "r.yaml: stages[0].seq_lenn: unknown key (did you mean seq_len?)"
    cases = {"stages[1].eval_evry": "eval_every", "run.outptu_dir": "output_dir", "stages[0].optim.lrr": "lr",
             "data.sources[0].formatt": "format"}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(base()))
    for key, near in cases.items():
        with pytest.raises(ConfigError) as err:
            load_recipe(p, [f"{key}=1"])
        assert str(err.value) == f"{p} with --set {key}=1: {key}: unknown key (did you mean {near}?)"
    with pytest.raises(ConfigError) as err:  # nothing near: no guess
        load_recipe(p, ["stages[0].zzz=1"])
    assert str(err.value).endswith("stages[0].zzz: unknown key")


def test_batch_arithmetic():
    s = parse_recipe(base()).stages[1]
    assert s.grad_accum_for(1) == 4 and s.grad_accum_for(2) == 2 and s.grad_accum_for(4) == 1
    with pytest.raises(ConfigError, match="not a multiple"):
        s.grad_accum_for(3)
    s.grad_accumulation = 3
    with pytest.raises(ConfigError, match="disagrees"):
        s.grad_accum_for(1)


def test_load_with_overrides_and_relative_paths(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text('{"text": "a"}\n')
    d = base()
    d["data"]["sources"][0]["path"] = "data/x.jsonl"
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    r = load_recipe(p, ["stages[0].steps=7", "run.output_dir=/tmp/out", "stages[1].optim.lr=0.5"])
    assert r.stages[0].steps == 7 and r.run.output_dir == "/tmp/out" and r.stages[1].optim.lr == 0.5
    assert r.data.sources[0].path == str(tmp_path / "data" / "x.jsonl")
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"missing\.yaml: recipe file not found in .*no shipped recipe named"):
        load_recipe("missing.yaml")  # a bare file name: a missing file first, not only "no shipped recipe"
    assert load_recipe("tiny-cpu.yaml").stages  # a shipped recipe's name with its suffix still names it
    (tmp_path / "bad.yaml").write_text("teacher: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_overrides_name_a_stage_by_its_name_as_ablate_grids_do(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(base()))
    names = [s.name for s in load_recipe(p).stages]
    last = names[-1]
    r = load_recipe(p, [f"stages[{last}].optim.lr=0.5", f"stages[{names[0]}].optim.lr=0.25"])
    assert r.stages[-1].optim.lr == 0.5 and r.stages[0].optim.lr == 0.25
    assert load_recipe(p, [f"stages[{len(names) - 1}].optim.lr=0.5"]).stages[-1].optim.lr == 0.5  # the same stage
    with pytest.raises(ConfigError, match=r"no element named 'stage9' \(the list has: " + ", ".join(names)):
        load_recipe(p, ["stages[stage9].optim.lr=9"])
    with pytest.raises(ConfigError, match="no list element 7"):
        load_recipe(p, ["stages[7].optim.lr=9"])
    with pytest.raises(ConfigError, match=r"\[stage3a\] is not inside a list"):
        load_recipe(p, ["run[stage3a]=1"])


def test_wsd_schedule_shape():
    cfg = OptimConfig(lr=1.0, schedule="wsd", warmup_ratio=0.1, decay_ratio=0.1, min_lr_ratio=0.02)
    f = [lr_factor(s, 100, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x == 1.0 for x in f[10:90])
    assert f[89] == 1.0 and f[90] < 1.0 and f[99] == pytest.approx(0.02)
    assert all(a >= b for a, b in zip(f[90:], f[91:]))


def test_cosine_schedule_shape():
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=5, min_lr_ratio=0.1)
    f = [lr_factor(s, 50, cfg) for s in range(50)]
    assert f[4] == pytest.approx(1.0) and f[5] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[5:], f[6:]))


def _one_stage_run(tmp_path):
    """A recipe dict of one stage 1 on 12 tiny documents (2 held out) into ``tmp_path/run``, the tokenizer and a
    tiny teacher for it."""
    from _distill_helpers import _train_tokenizer, text_records, tiny_llama, write_jsonl

    tok = _train_tokenizer()
    d = base()
    d["data"]["sources"][0]["path"] = str(write_jsonl(tmp_path / "t.jsonl", text_records(12)))
    d["data"]["heldout_documents"] = 2
    d["student"]["attention_layers"] = [0, 2]
    d["stages"] = d["stages"][:1]
    d["run"]["output_dir"] = str(tmp_path / "run")
    return d, tok, tiny_llama(len(tok))


def test_teacher_attn_implementation_is_applied(tmp_path):
    from _distill_helpers import tiny_llama

    from gendistill.distill.pipeline import run_recipe

    d, tok, teacher = _one_stage_run(tmp_path)
    d["teacher"]["attn_implementation"] = "eager"
    out = run_recipe(parse_recipe(d), teacher=teacher, tokenizer=tok, dry_run=True)
    assert teacher.config._attn_implementation == "eager"
    assert out.plan[0]["stage"] == "stage1"
    d["teacher"]["attn_implementation"] = "no-such-kernel"
    with pytest.raises(ConfigError, match="teacher.attn_implementation"):
        run_recipe(parse_recipe(d), teacher=tiny_llama(len(tok)), tokenizer=tok, dry_run=True)


def test_a_mixer_fla_cannot_train_here_is_refused_before_training(tmp_path, monkeypatch):
    """A student whose mixers fla refuses to train on this card (tests/model/test_mixer_training_refusal.py):
    run_recipe raises the line as a ConfigError (one line, exit 2 on the command line) after the plan, before the
    run folder exists or any step runs."""
    from gendistill.distill import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "training_refusal",
                        lambda student, device: seen.append(device) or "student mixers mamba2 cannot train here")
    d, tok, teacher = _one_stage_run(tmp_path)
    with pytest.raises(ConfigError, match="mamba2 cannot train here"):
        pipeline.run_recipe(parse_recipe(d), teacher=teacher, tokenizer=tok)
    assert seen and not (tmp_path / "run").exists()
