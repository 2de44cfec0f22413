"""``gendistill.load(...)`` and ``gendistill.push_to_hub(...)``: any model reference into memory, a saved student onto
the hub."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from gendistill.errors import GendistillError
from gendistill.models.loading import is_student_folder, load_model


def load(model: str | Path, *, dtype: str = "auto", device: str = "auto"):
    """``(model, tokenizer)`` for any model reference: a short name, a ``.gguf`` file, a local HF folder, a saved
    student, a hub id (teacher or pushed student). See :func:`gendistill.models.loading.load_model`."""
    return load_model(model, dtype=dtype, device=device)


#: files of a student folder that stay on this machine (gendistill's ownership marker)
LOCAL_ONLY = (".gendistill.json",)


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload hybrid student (gendistill)") -> str:
    """Upload a saved student folder (weights, config, tokenizer, ``README.md`` model card) to the hub as it is, in
    one commit through ``huggingface_hub`` (the library transformers' own ``push_to_hub`` uses); returns the commit
    URL. gendistill's local ownership marker stays behind. (``model.push_to_hub`` from transformers works too, but
    replaces the card with a generic one.)"""
    folder = Path(folder)
    if not is_student_folder(folder):
        raise GendistillError(f"{folder} is not a saved gendistill student (no hybrid config.json)")
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in LOCAL_ONLY]
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    ops = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files]
    info = api.create_commit(repo_id=repo, operations=ops, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


__all__ = ["load", "push_to_hub"]
