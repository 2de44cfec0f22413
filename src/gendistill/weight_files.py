"""Which weight files gendistill reads: safetensors only. ``pytorch_model.bin`` and its kin are pickles, which can run
code when loaded, so a teacher or student folder that holds only those is refused with one line saying how to convert
it (a hub model is loaded with ``use_safetensors=True``)."""

from __future__ import annotations

from pathlib import Path

from gendistill.errors import GendistillError

#: weight files transformers would unpickle; gendistill never loads them
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def has_safetensors(folder: Path) -> bool:
    """Whether ``folder`` holds safetensors weights (one file or an index of shards)."""
    return (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()


def refuse_pickle_weights(folder: Path, what: str, instead: str) -> None:
    """One line when ``folder`` (named ``what`` in it, e.g. ``"student folder"``) has no safetensors weights but a
    pickle; ``instead``: the other way out the line offers."""
    if has_safetensors(folder):
        return
    found = next((n for n in PICKLE_WEIGHTS if (folder / n).is_file()), None)
    if found is not None:
        raise GendistillError(
            f"{what} {folder}: its weights are {found}, a pickle file, which gendistill does not load; save them as "
            "safetensors (model.save_pretrained(folder, safe_serialization=True) where the model was made) or "
            f"{instead}")


__all__ = ["PICKLE_WEIGHTS", "has_safetensors", "refuse_pickle_weights"]
