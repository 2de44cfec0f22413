"""lm-evaluation-harness integration: run ``lm_eval`` on our teachers and hybrid students.

Two ways in:

* Command line — this module registers the model type ``gendistill`` with lm-eval and then hands over to lm-eval's own
  CLI, so every lm-eval option works::

      python -m gendistill.eval.harness run --model gendistill \\
          --model_args pretrained=runs/smollm2-135m-hybrid,dtype=float32 --tasks arc_easy --device cpu

  ``pretrained`` may be anything ``gendistill eval --model`` accepts: a student folder saved by the converter
  (``import gendistill`` registers the hybrid with the Auto classes, so no ``trust_remote_code``), a teacher short
  name such as ``smollm2-135m-instruct``, a ``.gguf`` file, a HF folder or a hub id.

* Python — :func:`make_lm` wraps an already loaded model and tokenizer in an ``HFLM`` for ``lm_eval.simple_evaluate``
  or for direct ``loglikelihood`` / ``generate_until`` calls (``benchmarks/lm_eval_agreement.py`` does this).

lm-eval's ``HFLM`` right-pads log-likelihood batches (no attention mask) and left-pads generation batches with an
attention mask, which the hybrid cache handles; nothing else needs overriding.
"""

from __future__ import annotations

import sys
from typing import Any

from gendistill.devices import resolve_device
from gendistill.errors import GendistillError
from gendistill.eval.rope import apply_rope_scaling, parse_rope_scaling
from gendistill.models.loading import load_model

_REGISTERED = False


def _import_lm_eval():
    try:
        from lm_eval.api.registry import register_model  # noqa: PLC0415  (optional extra: lm-eval)
        from lm_eval.models.huggingface import HFLM  # noqa: PLC0415  (optional extra: lm-eval)
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise GendistillError(f"lm-evaluation-harness is not installed (pip install 'gendistill[lm-eval]'): {exc}") from None
    return HFLM, register_model


def gendistill_lm_class():
    """The ``HFLM`` subclass registered as ``gendistill`` (created lazily so importing this module is cheap)."""
    global _REGISTERED, _CLASS
    if _REGISTERED:
        return _CLASS
    HFLM, register_model = _import_lm_eval()
    class GendistillLM(HFLM):
        """``HFLM`` that loads ``pretrained`` through gendistill (students, teacher short names, GGUF files)."""

        def __init__(self, pretrained: Any = "smollm2-135m-instruct", tokenizer: Any = None, dtype: Any = "auto",
                     device: str | None = "auto", rope_scaling: str | None = None, **kwargs: Any) -> None:
            if isinstance(pretrained, str):
                dev = resolve_device(device)
                model, tok = load_model(pretrained, dtype=dtype or "auto", device=dev)
                pretrained = model
                tokenizer = tokenizer or tok
            if rope_scaling:  # model_args rope_scaling=yarn:4, as `gendistill eval --rope-scaling`
                apply_rope_scaling(pretrained, parse_rope_scaling(rope_scaling))
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    register_model("gendistill")(GendistillLM)
    _CLASS = GendistillLM
    _REGISTERED = True
    return GendistillLM


_CLASS: Any = None


def make_lm(model, tokenizer, *, batch_size: int = 8, max_length: int | None = None, **kwargs: Any):
    """Wrap a loaded causal LM and its tokenizer as an lm-eval ``HFLM``."""
    cls = gendistill_lm_class()
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """Register ``gendistill`` with lm-eval and run lm-eval's CLI on the remaining arguments."""
    gendistill_lm_class()
    from lm_eval.__main__ import cli_evaluate  # noqa: PLC0415  (optional extra: lm-eval)

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
