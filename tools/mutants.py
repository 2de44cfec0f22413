"""Mutation check of the core tests: plant deliberate bugs one at a time in a scratch copy and see the tests fail.

Each mutant is a text substitution in one file of ``src/`` that must match exactly once (so a mutant that no longer
applies after a refactor is reported as stale, not silently skipped). For every mutant the script copies ``src/`` and
``tests/`` into a fresh temporary folder, applies the substitution there (the working tree is never touched), runs the
tests that are meant to catch it with a timeout, and records *caught* (the tests fail), *NOT CAUGHT* (they pass),
*stale* (the pattern is not found exactly once) or *error* (pytest could not collect or the run timed out). The tests
are first run once unmutated (the baseline) so a failure is known to come from the mutant.

Run on demand, not in CI (a few minutes on two cores)::

    python tools/mutants.py                      # all mutants; table on stdout, JSON in runs/mutants/
    python tools/mutants.py --only pad_gate,rng  # a subset (names or name prefixes)
    python tools/mutants.py --list

Exit status: 0 when every mutant is caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODEL = "tests/model/test_modeling_hybrid.py"
PATHS = "tests/distill/test_distill_model_paths.py"
TRAINER = "tests/distill/test_distill_trainer.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments (node ids, files, -k expressions)
    bug: str  # what a user would see


MUTANTS: list[Mutant] = [
    # ---- the five bugs the audit of issue 18 found that the whole suite let through
    Mutant("pad_gate", "src/gendistill/ops/kda/__init__.py",
           "g, beta = g * m[..., None, None], beta * m[..., None]", "g, beta = g, beta",
           (MODEL, "-k", "left_padded or all_kda"),
           "padded positions update the KDA state: batched eval differs from one sequence at a time"),
    Mutant("conv_doc_reset", "src/gendistill/ops/conv.py",
           "y = y + weight[:, j, None] * shifted * (pos_in_doc >= back).to(x.dtype)",
           "y = y + weight[:, j, None] * shifted",
           (PATHS,),
           "the short conv reads the previous packed document: training documents leak into each other"),
    Mutant("rng_not_restored", "src/gendistill/distill/checkpoint.py",
           "set_rng_state(*read_safetensors(rng))", "None",
           (TRAINER, "-k", "resume_continues"),
           "--resume draws other dropout masks than the uninterrupted run"),
    Mutant("completion_only_ignored", "src/gendistill/distill/trainer.py",
           "packed = PackedStream(data, tokenizer, stage.seq_len, stage.masking)",
           'packed = PackedStream(data, tokenizer, stage.seq_len, "all_tokens")',
           (TRAINER, "-k", "completion_only"),
           "stage 3b distils the user prompts too"),
    Mutant("mask_shifted_by_one", "src/gendistill/distill/data/packing.py",
           "loss_mask[:, :-1] = target[:, 1:] & valid[:, 1:]", "loss_mask[:, :-1] = target[:, :-1] & valid[:, 1:]",
           (TRAINER, "-k", "completion_only"),
           "the loss covers the token before each assistant token instead of the assistant tokens"),
    Mutant("long_continuation_ignores_cache", "src/gendistill/layers/base.py",
           "recurrent=recurrent, initial_state=recurrent_state,",
           "recurrent=recurrent, initial_state=recurrent_state if recurrent else None,",
           (MODEL, "-k", "multi_token_continuation"),
           "a prompt of more than 64 tokens after a cached prefix (multi-turn chat) forgets the prefix"),
    # ---- five more in the core paths
    Mutant("chunked_kl_grad_scale", "src/gendistill/distill/losses.py",
           "gh = (grad_h * g).to(ctx.dtypes[0]) if need_h else None",
           "gh = grad_h.to(ctx.dtypes[0]) if need_h else None",
           ("tests/distill/test_distill_losses.py",),
           "the chunked KL ignores the upstream gradient (1/denominator, loss weights): wrong gradient scale"),
    Mutant("gqa_repeat_order", "src/gendistill/layers/base.py",
           "kv = qkv[..., self.q_dim:].reshape(B, T, 2, Hkv, 1, K).expand(B, T, 2, Hkv, H // Hkv, K)",
           "kv = qkv[..., self.q_dim:].reshape(B, T, 2, 1, Hkv, K).expand(B, T, 2, H // Hkv, Hkv, K)",
           ("tests/model/test_convert.py", "-k", "expand_mode"),
           "query heads read another group's key head than in the teacher's attention"),
    Mutant("decay_gate_sign", "src/gendistill/ops/kda/gate.py",
           "return -A * F.softplus(x)",
           "return -A * F.softplus(-x)",
           ("tests/model/test_kda_ops.py",),
           "the decay gate uses softplus(-x): another forgetting rate than fla's KDA"),
    Mutant("bounded_gate_ignored_on_cpu", "src/gendistill/ops/kda/__init__.py",
           "g = kda_gate(f, A_log, dt_bias, lower_bound=gate_lower_bound)", "g = kda_gate(f, A_log, dt_bias)",
           ("tests/model/test_kda_ops.py", "-k", "bounded"),
           "a student converted with --kda-gate-lower-bound runs the paper's gate on CPU, not the one fla's "
           "safe_gate kernel computes on CUDA"),
    Mutant("grad_accum_denominator", "src/gendistill/distill/trainer.py",
           "loss = wrapped(mb, denom)", "loss = wrapped(mb, float(module.count(mb)))",
           (TRAINER, "-k", "gradient_accumulation"),
           "each micro-batch is averaged on its own: the result depends on micro_batch_size"),
    Mutant("qkv_not_masked_before_conv", "src/gendistill/layers/base.py",
           "qkv = qkv * pad_mask[..., None].to(qkv.dtype)", "pass",
           (MODEL, "-k", "left_padded or all_kda"),
           "padding tokens enter the conv window of the first real tokens in a left-padded batch"),
    Mutant("prefill_conv_state_dropped", "src/gendistill/layers/base.py",
           "initial_state=prev, output_final_state=cache is not None)",
           "initial_state=None, output_final_state=cache is not None)",
           (MODEL, "-k", "multi_token_continuation"),
           "a long continuation after a cached prefix restarts the short conv from zeros (prefill path)"),
    # ---- code moved or written by issue 30's restructuring
    Mutant("stage3b_prompts_distilled", "src/gendistill/distill/stage_facts.py",
           '"forward_kl", "completion_only")', '"forward_kl", "all_tokens")',
           ("tests/distill/test_distill_config.py", "-k", "every_stage"),
           "a recipe that does not set masking distils stage 3b's user prompts too"),
    Mutant("batch_rule_ignores_ranks", "src/gendistill/distill/stage_facts.py",
           "per_step = micro_batch_size * world_size", "per_step = micro_batch_size",
           ("tests/distill/test_distill_config.py", "-k", "batch_arithmetic"),
           "under N ranks every rank runs the whole step's micro-batches: the global batch is N times the recipe's"),
    Mutant("hidden_losses_refused", "src/gendistill/distill/config.py",
           "LossKind = Literal[tuple(LOGIT_LOSSES) + tuple(HIDDEN_LOSSES)]", "LossKind = Literal[tuple(LOGIT_LOSSES)]",
           ("tests/distill/test_distill_config.py", "-k", "defaults"),
           "stages 1 and 2 refuse their own hidden-state losses (mse, l2, cosine)"),
    Mutant("stage2_aligns_mixers_only", "src/gendistill/distill/stages.py",
           '"block": Stage2Module,', '"block": Stage1Module,',
           (PATHS, "-k", "aligns"),
           "stage 2 trains each KDA mixer alone instead of the whole block (MLP and norms left out of the loss)"),
    Mutant("checkpoint_mode_unchecked", "src/gendistill/distill/checkpoint.py",
           'if bool(state.get("sharded", False)) != sharded:', "if False:",
           ("tests/distill/test_distill_fsdp.py", "-k", "other_mode"),
           "a DDP checkpoint resumed under FSDP2 fails deep in DCP instead of one line naming both modes"),
    Mutant("bench_layers_not_resolved", "src/gendistill/bench/settings.py",
           "s.attention_layers = tuple(parse_attention_layers(spec, layers))", "parse_attention_layers(spec, layers)",
           ("tests/bench/test_bench_tiny.py", "-k", "grammar"),
           "bench records 'every:4' instead of the layers that kept attention"),
    Mutant("rank0_waits_to_report", "src/gendistill/cli_utils.py",
           "if world <= 1 or rank == 0:", "if world <= 1:",
           ("tests/test_cli_utils.py",),
           "under torchrun rank 0 waits 5 s before its one error line and prefixes its rank to it"),
    Mutant("past_key_values_ignored", "src/gendistill/models/hybrid/modeling_hybrid.py",
           '    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers\' own rename, as its '
           'models\n    def forward(\n        self,\n        input_ids: torch.LongTensor | None = None,\n'
           '        attention_mask: torch.Tensor | None = None,\n        position_ids: torch.LongTensor | None = None,\n'
           '        cache: Cache | None = None,\n        inputs_embeds: torch.Tensor | None = None,\n        use_cache',
           '    def forward(\n        self,\n        input_ids: torch.LongTensor | None = None,\n'
           '        attention_mask: torch.Tensor | None = None,\n        position_ids: torch.LongTensor | None = None,\n'
           '        cache: Cache | None = None,\n        inputs_embeds: torch.Tensor | None = None,\n        use_cache',
           (MODEL, "-k", "past_key_values"),
           "a caller passing past_key_values (the older name of cache) silently decodes without its cache"),
    Mutant("given_boundaries_dropped", "src/gendistill/models/hybrid/modeling_hybrid.py",
           "return given if given.numel() - 1 > position_ids.shape[0] else None",
           "return None",
           (PATHS, "-k", "boundaries_passed_by_the_caller"),
           "the boundaries the trainer passes are dropped: KDA state and convs run across packed documents"),
    Mutant("compiled_forward_left_behind", "src/gendistill/distill/compile.py",
           "            delattr(m, name)", "            pass",
           ("tests/distill/test_distill_compile.py", "-k", "removed"),
           "the trainer leaves torch.compile'd norms and MLPs on the student it returns"),
    Mutant("dropout_on_varlen_attention", "src/gendistill/models/packed_attention.py",
           'switched = [m for m in models if enabled and not (m.training and getattr(m.config, "attention_dropout", '
           '0.0))]',
           "switched = [m for m in models if enabled]",
           (PATHS, "-k", "attention_dropout"),
           "a student whose attention uses dropout is switched to varlen FlashAttention, which has none: it raises "
           "at its first training forward on a GPU"),
    Mutant("compile_recompile_limit_default", "src/gendistill/distill/compile.py",
           "RECOMPILE_LIMIT = 64", "RECOMPILE_LIMIT = 1",
           ("tests/distill/test_distill_compile.py", "-k", "qk_norms"),
           "Dynamo's default limit of 8 compiled versions: Qwen3's RMSNorm class runs eagerly after a stage change"),
    Mutant("recurrent_switch_moved", "src/gendistill/layers/base.py",
           "return state is not None and tokens <= RECURRENT_MAX_TOKENS and not self.training",
           "return state is not None and tokens <= 8 and not self.training",
           (MODEL, "-k", "cached_decode or multi_token_continuation"),
           "the recurrent/chunk switch moved: must give the same outputs (an equivalence, expected to survive)"),
    # ---- the evaluator's fast paths (issue 24)
    Mutant("decode_mask_ignores_padding", "src/gendistill/models/decoding.py",
           "                valid = valid & (state.arange[None, :] >= state.start[:, :1])",
           "                valid = valid",
           ("tests/eval/test_fast_generate.py", "-k", "left_padded"),
           "fast generation attends to the left padding of shorter prompts: batched answers change with the batch"),
    Mutant("compaction_keeps_wrong_rows", "src/gendistill/eval/generate.py",
           "slot, live = moved, [live[r] for r in active]",
           "slot, live = moved, live[: len(active)]",
           ("tests/eval/test_fast_generate.py", "-k", "compaction"),
           "after finished rows are dropped, the survivors' tokens are written to other prompts' outputs"),
    Mutant("fast_loglik_position_off_by_one", "src/gendistill/eval/loglik.py",
           "                key = (b, n - len(cont_ids) + j)  # logits at position p predict token p + 1",
           "                key = (b, n - len(cont_ids) + j - 1)",
           ("tests/eval/test_loglik_fast.py",),
           "the fast scorer reads each continuation token's log-probability one position early"),
    Mutant("fidelity_teacher_reads_across_documents", "src/gendistill/eval/heldout.py",
           '    return base(input_ids=rows["input_ids"].to(dev), position_ids=rows["position_ids"].to(dev), use_cache=False,',
           '    return base(input_ids=rows["input_ids"].to(dev), position_ids=rows["position_ids"].to(dev),',
           ("tests/eval/test_heldout.py", "tests/distill/test_distill_heldout.py"),
           "held-out fidelity lets transformers build a cache, which skips the packed-sequence mask: the teacher "
           "attends across the documents of a packed row (the defect of every fidelity figure before issue 25)"),
    Mutant("fla_configs_fuzzy", "src/gendistill/ops/fla_configs.py",
           'CACHE_MODE = "strict"',
           'CACHE_MODE = "fuzzy"',
           ("tests/model/test_fla_configs.py", "tests/model/test_fla_config_choice.py"),
           "fla reads the shipped kernel configurations in fuzzy mode: a configuration tuned for one head dimension "
           "is handed to another, where it may not fit (OutOfResources on an H100, float32, head dimension 128)"),
    Mutant("heldout_curve_seconds_from_start", "src/gendistill/ablate/heldout_curves.py",
           '        if "loss" in r and isinstance(step, int) and step >= 1 and t is not None and "stage" in r:',
           '        if "eval_loss" in r and isinstance(step, int) and step >= 0 and t is not None and "stage" in r:',
           ("tests/ablate/test_heldout_curves.py",),
           "the held-out curves count training time from the evaluation before training, so the first step's "
           "compiling (minutes on a fresh card) is charged to every variant's time axis"),
    Mutant("row_bucket_first_tuned", "src/gendistill/ops/fla_configs.py",
           "tuner.cache[key] = min(choices, key=lambda c: (abs(math.log(c[0] / nb)), c[0]))[1]",
           "tuner.cache[key] = choices[0][1]",
           ("tests/model/test_fla_configs.py",),
           "every row bucket of a norm kernel takes the first shipped bucket's configuration instead of the nearest"),
    Mutant("row_bucket_overwrites", "src/gendistill/ops/fla_configs.py",
           "                if key not in tuner.cache:\n                    tuner.cache[key] = min(",
           "                if True:\n                    tuner.cache[key] = min(",
           ("tests/model/test_fla_configs.py",),
           "seeding replaces keys already cached: what this process autotuned, or a shipped exact key"),
    Mutant("packed_batch_one_sequence", "src/gendistill/ops/varlen.py",
           "        host = torch.arange(0, rows * length + 1, length, dtype=torch.int32)",
           "        host = torch.tensor([0, rows * length], dtype=torch.int32)",
           ("tests/model/test_fla_call_sites.py", "-k", "packs_a_batch or padded_batch"),
           "a padded batch handed to fla as one packed row without its bounds: each row's state runs on into the "
           "next row"),
    Mutant("heldout_loss_is_the_kl", "src/gendistill/distill/trainer.py",
           '            ev = fid.get("loss")',
           '            ev = fid.get("kl_teacher_student")',
           ("tests/distill/test_distill_heldout.py",),
           "the one-pass held-out evaluation reports the KL as the stage's held-out loss, which holds only for "
           "forward KL at temperature 1"),
    # ---- 2026-12-05: held-out figures, the data path
    Mutant("heldout_logits_in_model_dtype", "src/gendistill/eval/heldout.py",
           "        return F.linear(hidden.float(), head.weight.float(), bias)",
           "        return head(hidden).float()",
           ("tests/eval/test_heldout.py", "-k", "float32"),
           "held-out top-1 / KL from bf16 logits on CUDA (bf16 models or the trainer's autocast): figures depend on the "
           "device"),
    Mutant("heldout_rows_follow_stage_masking", "src/gendistill/distill/data/streaming.py",
           "for enc_k, reader in zip(self.heldout_encoders, self.readers):",
           "for enc_k, reader in zip(self.encoders, self.readers):",
           ("tests/distill/test_distill_data.py", "-k", "whatever_the_stage"),
           "a masking ablation's all_tokens cell scores its held-out prompts too: its figures count other tokens"),
    Mutant("encode_cache_unbounded", "src/gendistill/distill/data/streaming.py",
           "            if self._encoded_tokens + len(enc.input_ids) > ENCODE_CACHE_TOKENS:",
           "            if False:",
           ("tests/distill/test_distill_data.py", "-k", "later_pass"),
           "a stage's stream keeps every document's encoding whatever the corpus size (host memory grows without "
           "bound on a large corpus)"),
    # ---- log-likelihood request ids (eval/pair_encoding.py): each guard of the tail rule
    Mutant("pair_tail_one_pre_token", "src/gendistill/eval/pair_encoding.py",
           "_TAIL_PRE_TOKENS = 2", "_TAIL_PRE_TOKENS = 1",
           ("tests/eval/test_pair_encoding.py",),
           "an option that completes a contraction ('We'r' + 'e here') is scored on other token ids than lm-eval's"),
    Mutant("pair_added_token_prefix", "src/gendistill/eval/pair_encoding.py",
           "        if any(n - k < p and context.endswith(s[:k]) for k in range(1, len(s))):",
           "        if False:",
           ("tests/eval/test_pair_encoding.py",),
           "a context ending in the start of a special token that the option completes is scored on other ids"),
    Mutant("pair_no_context_check", "src/gendistill/eval/pair_encoding.py",
           "            if head > 0 and list(ctx_ids[c][head:]) == list(ids):",
           "            if head > 0:",
           ("tests/eval/test_pair_encoding.py",),
           "a context that does not split where the tail starts is cut there anyway: wrong continuation ids"),
    Mutant("profile_phase_device_twice", "src/gendistill/distill/profiling.py",
           "    host = [e for e in events if _on_host(e)]", "    host = list(events)",
           ("tests/distill/test_distill_profile.py", "-k", "cuda_timeline"),
           "a CUDA profile's phases count each kernel twice (its host op and the kernel on the device timeline)"),
    Mutant("attention_left_eager_by_default", "src/gendistill/distill/compile.py",
           "cast: bool = True, attention: bool = True)", "cast: bool = True, attention: bool = False)",
           ("tests/distill/test_distill_compile.py", "-k", "compiled_attention or removed_after"),
           "the trainer's blocks leave the attention modules eager (1.10-1.12x slower step, results.md section 23)"),
    Mutant("cast_every_compiled_part", "src/gendistill/distill/compile.py",
           'CAST_TO_AUTOCAST = ("input_layernorm",)', "CAST_TO_AUTOCAST = PARTS",
           ("tests/distill/test_distill_compile.py", "-k", "first_norm_returns_bf16"),
           "every compiled norm returns bf16 under autocast, the final norm feeding the loss among them"),
    Mutant("cast_norm_input_not_output", "src/gendistill/distill/compile.py",
           "        out = fn(self, *args, **kwargs)\n",
           "        out = fn(self, args[0].to(torch.bfloat16).float(), *args[1:], **kwargs)\n",
           ("tests/distill/test_distill_compile.py", "-k", "first_norm_returns_bf16"),
           "the first norm reads its input rounded to bf16: its output is no longer the fp32 norm rounded once"),
    Mutant("gqa_heads_tiled", "src/gendistill/models/packed_attention.py",
           "x.transpose(1, 2)[:, :, :, None].expand(B, T, Hkv, rep, D)",
           "x.transpose(1, 2)[:, :, None].expand(B, T, rep, Hkv, D)",
           ("tests/model/test_packed_attention.py",),
           "an older varlen_attn gets k/v heads tiled, not repeated per group: query head h reads the wrong k/v head"),
    Mutant("loss_imports_fla_first", "src/gendistill/distill/losses.py",
           "    if not fla_available():", "    if False:",
           ("tests/distill/test_distill_losses.py", "-k", "fla_available_first"),
           "the fused loss imports fla without asking fla_available(): fla starts before its shipped configurations"),
    # ---- fla's intra-card split (issue 26): fla 0.6.0 splits a packed call of several sequences wrongly
    Mutant("split_guard_lets_two_sequences_through", "src/gendistill/ops/backend.py",
           "cu_seqlens.numel() > 2 and fla_splits_prefills():", "cu_seqlens.numel() > 3 and fla_splits_prefills():",
           ("tests/model/test_fla_call_sites.py", "-k", "never_taken"),
           "a padded batch of two long prompts reaches fla's split with the user's switch on: wrong outputs"),
    Mutant("packed_call_unguarded", "src/gendistill/ops/varlen.py",
           "    with fla_split_guard(dev):\n", "    with fla_split_guard(None):\n",
           ("tests/model/test_fla_call_sites.py", "-k", "never_taken"),
           "gendistill's own packing of a padded batch reaches fla's split: wrong outputs for a second long row"),
    Mutant("given_bounds_unguarded", "src/gendistill/ops/varlen.py",
           "        with fla_split_guard(cu_seqlens):\n            return fn(",
           "        with fla_split_guard(None):\n            return fn(",
           ("tests/model/test_fla_call_sites.py", "-k", "never_taken"),
           "a packed call of two long documents given by the caller reaches fla's split: wrong outputs"),
    Mutant("prefill_check_tolerance_ignored", "src/gendistill/bench/engine.py",
           "and same_layout and rel <= tolerance}", "and same_layout}",
           ("tests/bench/test_engine.py", "-k", "compare_prefills"),
           "a graphed prefill whose cache differs by 5 % from the eager one is accepted and timed"),
    # ---- weights joined once for inference (issue 26)
    Mutant("joins_used_with_gradients", "src/gendistill/layers/base.py",
           "if j is None or torch.is_grad_enabled() or j.source", "if j is None or j.source",
           ("tests/model/test_joined_weights.py", "-k", "gradients"),
           "a training step inside joined_weights trains on the weights of the block's entry: its gradients are wrong"),
    Mutant("joins_outlive_their_weights", "src/gendistill/layers/base.py",
           " or j.source != _identity(self._joinable()):", ":",
           ("tests/model/test_joined_weights.py", "-k", "copy_or_a_new_storage"),
           "a model copied inside the block, or a weight given new storage, computes with another model's weights"),
    # ---- evaluations that share a card, and HumanEval's prompt (issue 29)
    Mutant("padding_mask_not_counted", "src/gendistill/models/decoding.py",
           "return 0, 2 * kv + recurrent + activations + mask", "return 0, 2 * kv + recurrent + activations",
           ("tests/eval/test_fast_generate.py", "-k", "memory_estimate"),
           "16 left-padded rows of 16K tokens are planned without their 8 GiB attention mask: out of memory"),
    Mutant("memory_fraction_ignored", "src/gendistill/devices.py",
           "    if fraction < 1.0:\n", "    if False:\n",
           ("tests/eval/test_fast_generate.py", "-k", "memory_limit"),
           "an evaluation beside a distillation plans for memory the trainer takes later: one of them runs out"),
    Mutant("row_prefill_left_aligned", "src/gendistill/models/decoding.py",
           "dst.keys[b, :, width - n:width].copy_(layer.keys[0])", "dst.keys[b, :, :n].copy_(layer.keys[0])",
           ("tests/eval/test_fast_generate.py", "-k", "one_row"),
           "a long prompt prefilled alone lands at the wrong cache columns: its decode reads padding as its context"),
    Mutant("memory_fraction_bare_device", "src/gendistill/devices.py",
           "torch.cuda.set_per_process_memory_fraction(fraction, cuda_index(device))",
           "torch.cuda.set_per_process_memory_fraction(fraction, device)",
           ("tests/eval/test_fast_generate.py", "-k", "memory_limit"),
           "--gpu-memory-fraction with the CLI's bare 'cuda' device: torch raises ValueError, every e2e suite fails"),
    Mutant("humaneval_prompt_prefilled", "src/gendistill/eval/humaneval.py",
           'return apply_chat(tok, self.gen_messages(ex, shots)) + "```python\\n"',
           'return apply_chat(tok, self.gen_messages(ex, shots)) + "```python\\n" + ex.fields["prompt"]',
           ("tests/eval/test_humaneval.py", "-k", "prompt"),
           "the reply repeats the problem's prompt: a small instruct model closes the fence at once (0 % pass@1)"),
    # ---- layer selection: one aligned student for every method, candidates made of known weights (issue 27)
    Mutant("aligned_from_settings_unchecked", "src/gendistill/select/session.py",
           "    if alignment_fingerprint(other) != alignment_fingerprint(cfg):\n", "    if False:\n",
           ("tests/select/test_select_aligned.py", "-k", "other_settings"),
           "a method reuses a student aligned on other data or steps: its scores rank layers of another student"),
    Mutant("aligned_from_ignored", "src/gendistill/select/session.py",
           "        elif source is not None:", "        elif False:",
           ("tests/select/test_select_aligned.py", "-k", "reusing"),
           "--aligned-from is accepted and the student is aligned again: the lease pays the alignment per method"),
    Mutant("alignment_timed_twice", "src/gendistill/select/session.py",
           "            self.aligned_state()  # timed as its own record, not as this set's\n", "",
           ("tests/select/test_select_aligned.py", "-k", "each_second_once"),
           "a selection's GPU-minutes count the alignment twice (the first lease reported 16.4 for 10.5 of wall)"),
    Mutant("candidate_checkpoints_written", "src/gendistill/distill/trainer.py",
           "            if checkpoints and (step % ckpt_every == 0 or step == total_steps or stop_now):",
           "            if (step % ckpt_every == 0 or step == total_steps or stop_now):",
           ("tests/select/test_select_aligned.py", "-k", "no_checkpoint"),
           "each kl-guided set writes 1.6 GB of student and optimizer to delete them: minutes of a lease on disk"),
    Mutant("candidate_not_from_aligned", "src/gendistill/select/session.py",
           "    student.load_state_dict({k: v for k, v in aligned.items() if k in own}, strict=False)\n", "",
           ("tests/select/test_select_aligned.py", "-k", "every_weight"),
           "each candidate keeps the conversion's random initialisation: the scores rank noise, not layers"),
    Mutant("first_step_line_skipped", "src/gendistill/distill/metrics.py",
           "if step % self.every == 0 or step == self.total or first:",
           "if step % self.every == 0 or step == self.total:",
           ("tests/distill/test_run_logging.py", "-k", "first_step"),
           "a stage's first step prints nothing between log_every lines: the wait before training goes unsaid"),
    Mutant("progress_bar_on_stdout", "src/gendistill/distill/metrics.py",
           "                console=Console(stderr=True),", "",
           ("tests/distill/test_run_logging.py", "-k", "first_step"),
           "the progress bar and its notes go into a redirected stdout, apart from the plain lines on stderr"),
    Mutant("process_clock_from_import", "src/gendistill/clock.py",
           'return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")', "return _IMPORTED_AT",
           ("tests/test_clock.py",),
           "the seconds before the first step leave out the imports and start-up before gendistill's clock"),
    Mutant("first_step_record_skipped", "src/gendistill/distill/trainer.py",
           "if step % stage.log_every == 0 or last or first:", "if step % stage.log_every == 0 or last:",
           ("tests/distill/test_distill_cli.py", "-k", "stop_and_resume"),
           "a stage's first step is not in metrics.jsonl between log_every steps: no record of how long it came"),
    Mutant("shipped_kernel_config_replaced", "src/gendistill/ops/fla_configs.py",
           "if (h := _key_hash(key)) not in held:", "if (h := _key_hash(key)) or True:",
           ("tests/model/test_fla_configs.py", "-k", "log_records"),
           "--keep-existing replaces a shipped configuration with another card's or run's choice"),
    # ---- mixers fla cannot train on the card (issue 28: fla 0.6.0 on a Hopper GPU under Triton 3.6)
    Mutant("mixer_refusal_not_checked", "src/gendistill/distill/pipeline.py",
           "    if refusal is not None:\n        raise ConfigError(refusal)\n", "",
           ("tests/distill/test_distill_config.py", "-k", "cannot_train_here"),
           "a Gated DeltaNet or Mamba2 student on an H100 starts training and dies at fla's first backward"),
    Mutant("grid_mixer_refusal_not_checked", "src/gendistill/ablate/runner.py",
           "    check_mixers_train_here(grid)\n", "",
           ("tests/ablate/test_sharing.py", "-k", "cannot_train"),
           "a mixer axis on an H100 trains KDA's cell, then stops at Gated DeltaNet's: the lease's minutes are gone"),
    Mutant("mixer_refusal_ignores_tilelang", "src/gendistill/ops/backend.py",
           "    if not fp32_states and TileLangBackend.is_available() and CommonTileLangBackend().is_enabled():\n"
           "        return None\n", "",
           ("tests/model/test_mixer_training_refusal.py",),
           "a user who installed tilelang (fla's way out) is still refused"),
    # ---- Gated DeltaNet's and Mamba2's backward on Hopper at a key block width Triton compiles right (fla #640)
    Mutant("hopper_dqkwg_keeps_width_64", "src/gendistill/ops/fla_hopper_dqkwg.py",
           "    if bk != BAD_BK:\n", "    if True:\n",
           ("tests/model/test_fla_hopper_dqkwg.py",),
           "the backend launches the miscompiled width: wrong dk and dg on every H100 / H200"),
    Mutant("hopper_dqkwg_partials_not_summed", "src/gendistill/ops/fla_hopper_dqkwg.py",
           "        dg = dg.sum(0)\n", "        dg = dg[0]\n",
           ("tests/model/test_fla_hopper_dqkwg.py",),
           "the gate gradient keeps the first key block's half: Gated DeltaNet's gates learn from half their gradient"),
    Mutant("hopper_dqkwg_off_by_default", "src/gendistill/ops/fla_hopper_dqkwg.py",
           'os.environ.get(ENV, "1") != "0"', 'os.environ.get(ENV, "0") != "0"',
           ("tests/model/test_fla_hopper_dqkwg.py",),
           "the backend checked on the card is off again: every Gated DeltaNet or Mamba2 distill on an H100 refuses"),
    Mutant("hopper_dqkwg_switch_ignored", "src/gendistill/ops/fla_hopper_dqkwg.py",
           'or os.environ.get(ENV, "1") != "0"', "or True",
           ("tests/model/test_fla_hopper_dqkwg.py",),
           "GENDISTILL_FLA_HOPPER_BK32=0 no longer gives a user fla's own refusal back"),
    Mutant("hopper_dqkwg_not_registered", "src/gendistill/ops/fla_hopper_dqkwg.py",
           '    register("common")(_backend_class())\n', "",
           ("tests/model/test_fla_hopper_dqkwg.py",),
           "gendistill says Gated DeltaNet trains on the card, fla then refuses at the first backward"),
    # ---- grids resumed from a lease's collected results (metrics and evaluations, no students)
    Mutant("carried_stage_run_resumed", "src/gendistill/ablate/runner.py",
           'fresh = node.status() == "retrain"', "fresh = False",
           ("tests/ablate/test_sharing.py", "-k", "carried"),
           "a grid resumed from a lease's collected results stops at the first shared stage run whose student stayed "
           "on the last machine"),
    Mutant("evaluated_cell_retrained", "src/gendistill/ablate/runner.py",
           "            if eval_done(p.eval_dir):  # evaluated", "            if False:  # evaluated",
           ("tests/ablate/test_sharing.py", "-k", "carried"),
           "a lease that carries earlier cells' results retrains them for nothing (16 minutes of a 30-minute lease)"),
    # ---- the report's figures
    Mutant("axis_curves_in_shared_stage", "src/gendistill/ablate/heldout_curves.py",
           "        at = stage or axis_stage(rep, a[\"axis\"])", "        at = stage or CURVE_STAGE",
           ("tests/ablate/test_heldout_curves.py", "-k", "tells"),
           "a masking or freezing axis is drawn as its variants' one shared stage-3a run: equal lines, nothing to see"),
    Mutant("slope_labels_stacked", "src/gendistill/reporting.py",
           "        out[i] = last = max(values[i], last + gap)", "        out[i] = last = values[i]",
           ("tests/ablate/test_report.py", "-k", "labels"),
           "two variants that end close under generation get their labels printed over each other"),
    # ---- fla's kernel configurations and the fused loss
    Mutant("affected_imports_fla_first", "src/gendistill/ops/fla_hopper_dqkwg.py",
           "        activate()\n", "        pass\n",
           ("tests/model/test_fla_config_choice.py", "-k", "refuses"),
           "asking which backward runs before any kernel imports fla unconfigured: a fresh card autotunes every kernel"),
    Mutant("plain_seeding_overwrites_fla_autotuners", "src/gendistill/ops/fla_configs.py",
           "        if type(tuner) is not Autotuner:", "        if False:",
           ("tests/model/test_fla_configs.py", "-k", "plain"),
           "fla's own file-reading autotuners get a second, unchecked source of configurations"),
    Mutant("fused_ce_at_temperature", "src/gendistill/distill/losses.py",
           "target, w_s.to(dtype), ignore_index=-100,", "target, ws, ignore_index=-100,",
           ("tests/model/test_fla_call_sites.py", "-k", "cross_entropy"),
           "the fused loss's cross-entropy is taken at the distillation temperature, not on the student's own logits"),
    Mutant("hopper_prune_on_every_gpu", "src/gendistill/ops/fla_configs.py",
           "    if tuple(capability) != (9, 0):\n        return 0\n", "",
           ("tests/model/test_fla_configs.py", "-k", "hopper"),
           "GLA's output kernel loses its 8-warp candidates on every GPU, not only where they fail"),
    # ---- the bugs the reviews of 2026-12-07 found (training path, evaluation path, hybrid model)
    Mutant("heldout_partial_row_dropped", "src/gendistill/distill/data/streaming.py",
           "min_document_tokens=2, flush=True", "min_document_tokens=2",
           ("tests/distill/test_distill_data.py", "-k", "partial_row"),
           "held-out documents shorter than a row give no held-out evaluation; the last partial row is never scored"),
    Mutant("short_documents_hang", "src/gendistill/distill/data/streaming.py",
           "if n < 8 or longest < shortest:", "if n < 8:",
           ("tests/distill/test_distill_data.py", "-k", "min_document_tokens"),
           "a source whose first records are short is refused although later ones are long enough"),
    Mutant("divergence_judged_by_a_later_loss", "src/gendistill/distill/divergence.py",
           "if not later or later[0] != step + 1:", "if not later:",
           ("tests/reliability/test_divergence.py", "-k", "own_weights"),
           "with log_every > 1 a healthy checkpoint is renamed diverged for a loss later weights gave"),
    Mutant("head_bias_never_trains", "src/gendistill/distill/losses.py",
           "return gh, gw, None, None, None, gb,", "return gh, gw, None, None, None, None,",
           ("tests/distill/test_distill_losses.py", "-k", "biases"),
           "a trainable lm_head bias gets no gradient through the chunked loss"),
    Mutant("linear_cache_counts_the_conv_width", "src/gendistill/layers/base.py",
           "_count_prefill_tokens(cache, self.layer_idx, T - conv_state.shape[-1])", "None",
           (MODEL, "-k", "first_layer_is_kda"),
           "a student whose layer 0 is KDA continues a returned cache at the wrong length (transformers >= 5.25)"),
    Mutant("recording_cache_gets_the_final_state_only", "src/gendistill/layers/base.py",
           "if cache is None or T == 1 or not cache.is_recording_past(layer_idx):", "if True:",
           (MODEL, "-k", "assisted"),
           "assisted decoding crops the KDA state to the wrong token: it differs from greedy decoding"),
    Mutant("explicit_statements_in_pattern_order", "src/gendistill/eval/extract.py",
           "key=lambda m: m.start())", "key=lambda m: 0)",
           ("tests/eval/test_extract_cases.py",),
           "'I'd go with B. Answer A is tempting' is graded as A"),
    Mutant("reference_reads_the_checkpoints_penalties", "src/gendistill/eval/generate.py",
           "saved, self.model.generation_config = self.model.generation_config, GenerationConfig()",
           "saved = self.model.generation_config",
           ("tests/eval/test_fast_generate.py", "-k", "generation_settings"),
           "the reference engine applies generation_config.json's repetition penalty; the fast engine does not"),
    Mutant("ablate_scores_compared_bit_for_bit", "src/gendistill/ablate/report.py",
           "    return round(v, 9) if v == v else v", "    return v",
           ("tests/ablate/test_report.py", "-k", "equal_means"),
           "two variants with equal mean accuracy get different ranks and a false rank reversal"),
    Mutant("ablate_unknown_stderr_is_zero", "src/gendistill/ablate/report.py",
           '"stderr": se if se is not None else math.nan,', '"stderr": se if se is not None and se == se else 0.0,',
           ("tests/ablate/test_report.py", "-k", "unknown_standard"),
           "a reversal on a one-example task is reported significant (z = inf)"),
    Mutant("product_grid_budget_unchecked", "src/gendistill/ablate/grid.py",
           'if (m := _STAGE_SUFFIX.match(a)) and m.group(1) == "tokens"}',
           'if (m := _STAGE_SUFFIX.match(a)) and m.group(1) == "tokens"} | {"stage1", "stage2", "stage3a", "stage3b"}',
           ("tests/ablate/test_grid.py", "-k", "equal_budget"),
           "a product grid with a tokens axis lets another axis change a stage's budget unnoticed"),
    Mutant("budget_curve_ignores_series", "src/gendistill/ablate/curve.py",
           '.setdefault(p.get("series", ""), set())', '.setdefault("", set())',
           ("tests/ablate/test_report.py", "-k", "crossed_with_another"),
           "in product mode an axis crossed with a tokens axis is drawn as one zigzagging budget curve"),
    Mutant("capture_counts_one_batch", "src/gendistill/eval/generate.py",
           "slot.eager_steps >= self.EAGER_STEPS", "made - 1 >= self.EAGER_STEPS",
           ("tests/eval/test_fast_generate.py", "-k", "capture_their_slot_once"),
           "a task of many short-answer batches decodes every batch eagerly, never capturing its slot's graph"),
    Mutant("stale_temps_match_user_backups", "src/gendistill/ownership.py",
           r'(tmp|old)-(\d+)-[0-9a-f]{{8}}$"', r'(tmp|old)-(\d+)(-.*)?$"',
           ("tests/reliability/test_overwrite_and_outputs.py", "-k", "stale_temporaries"),
           "a user's hidden .student.old-2023 backup next to --out is deleted as a stale temporary"),
    Mutant("teacher_pickle_loaded", "src/gendistill/teachers.py",
           'refuse_pickle_weights(Path(source.location), "teacher folder", "pass a .gguf file")', "pass",
           ("tests/test_teachers.py", "-k", "pickled_weights"),
           "a teacher folder of pytorch_model.bin is not refused in one line"),
    Mutant("any_marker_owns_every_file", "src/gendistill/ownership.py",
           "        return lambda rel: _matches(rel, recorded)", "        return lambda rel: True",
           ("tests/eval/test_out_ownership.py", "-k", "another_command_marked"),
           "eval overwrites a user's results.md in a folder bench marked"),
]
# A control: recurrent_switch_moved moves the switch between two correct kernels and must NOT be caught.
CONTROLS = {"recurrent_switch_moved"}


def apply(m: Mutant, root: Path) -> str | None:
    """Apply ``m`` under ``root``; returns None, or why it does not apply."""
    path = root / m.file
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        return f"pattern found {n} times in {m.file} (expected exactly once)"
    path.write_text(text.replace(m.old, m.new))
    return None


def scratch_copy() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="gendistill-mutant-"))
    for d in ("src", "tests", "benchmarks"):
        shutil.copytree(ROOT / d, tmp / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def run_tests(root: Path, args: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """(outcome, seconds, last lines) with outcome in passed / failed / error / timeout."""
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", *args]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    dt = time.perf_counter() - t0
    lines = (res.stdout + res.stderr).strip().splitlines()
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    tail = "\n".join(failed or lines[-2:])
    outcome = {0: "passed", 1: "failed"}.get(res.returncode, "error")
    return outcome, dt, tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated mutant names (or prefixes)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    ap.add_argument("--out", default=str(ROOT / "runs" / "mutants"), help="folder for mutants.json")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selected tests")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(150, shutil.get_terminal_size().columns))
    chosen = MUTANTS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        chosen = [m for m in MUTANTS if any(m.name.startswith(w) for w in wanted)]
        if not chosen:
            console.print(f"--only {args.only!r}: no such mutant (see --list)")
            return 2
    if args.list:
        for m in chosen:
            console.print(f"{m.name:34} {m.file}: {m.bug}")
        return 0

    results = []
    if not args.no_baseline:
        for tests in dict.fromkeys(m.tests for m in chosen):
            root = scratch_copy()
            try:
                outcome, dt, tail = run_tests(root, tests, args.timeout)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            console.print(f"baseline {' '.join(tests)}: {outcome} ({dt:.0f} s)")
            if outcome != "passed":
                console.print(f"the unmutated tests do not pass; fix them first:\n{tail}")
                return 1
    for m in chosen:
        root = scratch_copy()
        try:
            why = apply(m, root)
            if why:
                outcome, dt, tail = "stale", 0.0, why
            else:
                outcome, dt, tail = run_tests(root, m.tests, args.timeout)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        control = m.name in CONTROLS
        if outcome == "stale":
            status = "stale"
        elif outcome in ("timeout", "error"):
            status = outcome
        elif control:
            status = "survived (control)" if outcome == "passed" else "CAUGHT (control: false alarm)"
        else:
            status = "caught" if outcome == "failed" else "NOT CAUGHT"
        ok = status in ("caught", "survived (control)")
        results.append({**asdict(m), "tests": list(m.tests), "status": status, "ok": ok, "seconds": round(dt, 1),
                        "tail": tail})
        console.print(f"{m.name}: {status} ({dt:.0f} s)")

    table = Table(title="mutants (each planted alone in a scratch copy)")
    for col in ("mutant", "file", "tests", "status", "s", "first failing test"):
        table.add_column(col, overflow="fold")
    for r in results:
        style = "green" if r["ok"] else "bold red"
        table.add_row(r["name"], r["file"].removeprefix("src/gendistill/"), " ".join(r["tests"]).replace("tests/", ""),
                      f"[{style}]{r['status']}[/{style}]", f"{r['seconds']:.0f}",
                      r["tail"].splitlines()[0].split("::")[-1][:60] if r["tail"] else "")
    console.print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutants.json").write_text(json.dumps({"mutants": results}, indent=1))
    n_ok = sum(r["ok"] for r in results)
    console.print(f"{n_ok}/{len(results)} as expected; JSON in {out / 'mutants.json'}")
    return 0 if n_ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
