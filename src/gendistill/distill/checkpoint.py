"""Atomic, verified, pickle-free training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/<stage>/step-00000120/`` holding

- ``model.safetensors``      the whole student;
- ``optimizer.safetensors``  every optimizer state tensor (``state.<param index>.<name>``), and
  ``optimizer.json``         the parameter groups and any non-tensor state;
- ``rng-<rank>.safetensors`` the Python, NumPy, torch CPU and CUDA generator states of each rank, as tensors (the
  few scalars in the file's metadata);
- ``state.json``             step, tokens seen, data-stream position, fingerprints;
- ``manifest.json``          written last: the size and SHA-256 of every other file.

Nothing is ever loaded with pickle. The folder is written into a temporary sibling and renamed into place, so a crash
mid-write never leaves a half checkpoint under a valid name. On resume every candidate is checked against its
manifest, newest first; a damaged or incomplete one is skipped with a one-line warning naming the damaged file, and
the newest intact one is loaded. A checkpoint whose parameters or optimizer state are not finite is never written.
The newest ``keep`` are kept.

Under ``run.distributed: fsdp`` the model and optimizer files are replaced by every rank's DCP shards (safetensors,
see :mod:`gendistill.distill.sharded_checkpoint`); everything else here is the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from gendistill.errors import GendistillError
from gendistill.io import publish_dir, write_error_text, write_errors
from gendistill.ownership import OutputError, check_free_space, tensor_bytes

FORMAT = 2
MANIFEST = "manifest.json"
_STEP_RE = re.compile(r"^step-(\d{8})$")
_TMP_RE = re.compile(r"^\.tmp-step-\d{8}$")


class CheckpointError(GendistillError):
    """A checkpoint cannot be used for this run (changed settings, another teacher or student layout)."""


# ------------------------------------------------------------------------------------------------------- RNG state
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every generator of this process as ``(tensors, metadata)`` for a safetensors file."""
    version, mt, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "python.state": torch.tensor(mt, dtype=torch.int64),
        "numpy.key": torch.from_numpy(key.astype(np.int64)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    meta = {"python": json.dumps([version, gauss]), "numpy": json.dumps([kind, int(pos), int(has_gauss), cached])}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    version, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(int(x) for x in tensors["python.state"].tolist()), gauss))
    kind, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((kind, tensors["numpy.key"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


# ------------------------------------------------------------------------------------------------- optimizer state
def optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``state.<index>.<name>``) and a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = v.detach().cpu().contiguous()
            else:
                other.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "other_state": other}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, st in rest.get("other_state", {}).items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": param_groups_from_json(rest)}


def param_groups_from_json(rest: dict[str, Any]) -> list[dict[str, Any]]:
    """The optimizer's param groups as saved in JSON, with ``betas`` back to a tuple."""
    groups = []
    for g in rest["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return groups


# ---------------------------------------------------------------------------------------------------- finiteness
def first_non_finite(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str | None:
    """The name of the first parameter or optimizer-state tensor holding a NaN or an infinity, or None."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                for k, v in optimizer.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor) and v.is_floating_point():
                        named.append((f"optimizer state {k} of {names.get(id(p), '?')}", v))
    named = [(n, t.to_local() if hasattr(t, "to_local") else t) for n, t in named]  # FSDP2: this rank's shard
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    for idx in by_device.values():  # one host sync per device
        ok = torch.stack([torch.isfinite(named[i][1].detach()).all() for i in idx]).cpu()
        if not bool(ok.all()):
            return named[idx[int((~ok).nonzero()[0])]][0]
    return None


#: a checkpoint counts as usable when the loss its weights gave is finite and at most this multiple of the loss the
#: stage started at (per-batch losses are noisy; a diverging model's loss grows by orders of magnitude, or to inf/nan)
HEALTHY_LOSS_FACTOR = 4.0
DIVERGED_PREFIX = "diverged-"


def _stage_losses(run_dir: Path, stage: str) -> tuple[dict[int, float], dict[int, float]]:
    """``(training loss by step, held-out loss by step)`` of ``stage`` from the run's ``metrics.jsonl``."""
    train: dict[int, float] = {}
    held: dict[int, float] = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return train, held
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut off by a kill
            continue
        if not isinstance(rec, dict) or rec.get("stage") != stage or not isinstance(rec.get("step"), int):
            continue
        for key, into in (("loss", train), ("eval_loss", held)):
            if isinstance(rec.get(key), (int, float)):
                into[rec["step"]] = float(rec[key])
    return train, held


def _start_level(losses: dict[int, float]) -> float | None:
    """The loss a stage started at: its first finite logged value (the untrained weights' loss; a held-out loss
    logged at step 0)."""
    return next((losses[k] for k in sorted(losses) if math.isfinite(losses[k])), None)


def _evidence(step: int, train: dict[int, float], held: dict[int, float],
              diverged_at: int | None) -> tuple[bool | None, str]:
    """Whether the weights of the checkpoint at ``step`` are usable, judged by the loss they gave: the held-out loss
    logged at ``step`` (computed with exactly these weights), else the training loss of the next logged step (its
    forward pass used these weights when the step follows at once). ``(None, "")`` when nothing was logged."""
    if diverged_at is not None and diverged_at == step + 1:
        return False, f"its weights gave a non-finite loss or gradient at step {diverged_at}"
    if step in held:
        value, start, what = held[step], _start_level(held), f"held-out loss {held[step]:.4g} at step {step}"
    else:
        later = sorted(k for k in train if k > step and (diverged_at is None or k < diverged_at))
        if not later:
            return None, ""
        value, start, what = train[later[0]], _start_level(train), f"loss {train[later[0]]:.4g} at step {later[0]}"
    if not math.isfinite(value):
        return False, f"its weights gave {what}"
    if start is not None and start > 0 and value > HEALTHY_LOSS_FACTOR * start:
        return False, (f"its weights gave {what}, over {HEALTHY_LOSS_FACTOR:g}x the {start:.4g} the stage started "
                       "at")
    return True, f"its weights gave {what}"


def recovery_hint(last_good: Path | None, diverged_at: int | None = None) -> str:
    """The end of a divergence message: the checkpoint to continue from, and how.

    Finite weights are not enough: weights of 1e30 are finite, and resuming from them repeats the divergence. The
    loss a checkpoint's weights gave says whether they are usable (:func:`_evidence`: finite, and at most
    :data:`HEALTHY_LOSS_FACTOR` times the loss the stage started at). ``diverged_at``: the step whose loss or
    gradient was not finite (None when the loss was finite and the optimizer step overflowed). Checkpoints newer
    than the newest usable one are renamed ``diverged-step-…`` (kept, but skipped by ``--resume``), so that the
    advice -- a lower learning rate and ``--resume`` -- continues from the usable one. Only rank 0 renames."""
    if last_good is None:
        return ("no checkpoint of this stage was written yet; lower the learning rate and rerun with --resume (the "
                "stage starts over; completed stages are kept)")
    stage_dir = last_good.parent
    train, held = _stage_losses(stage_dir.parent.parent, stage_dir.name)
    bad: list[tuple[Path, str]] = []
    good: tuple[Path, str] | None = None
    m = _STEP_RE.match(last_good.name)
    newest = int(m.group(1)) if m else None
    for step, path in reversed(list_checkpoints(stage_dir)):
        if newest is not None and step > newest:
            continue
        ok, why = _evidence(step, train, held, diverged_at)
        if ok is False:
            bad.append((path, why))
            continue
        good = (path, why)
        break
    if bad and int(os.environ.get("RANK", "0")) == 0:
        for path, _ in bad:  # resume skips them from now on; nothing is deleted
            target, n = path.with_name(DIVERGED_PREFIX + path.name), 1
            while target.exists():  # the same step diverged before (an earlier attempt)
                n += 1
                target = path.with_name(f"{DIVERGED_PREFIX}{path.name}-{n}")
            try:
                path.rename(target)
            except OSError:
                pass
    moved = "; ".join(f"{p.name} ({why})" for p, why in bad)
    moved = (f"checkpoint{'s' if len(bad) > 1 else ''} already diverging, renamed {DIVERGED_PREFIX}step-... so that "
             f"--resume skips {'them' if len(bad) > 1 else 'it'}: {moved}; ") if bad else ""
    if good is None:
        return (f"{moved}no kept checkpoint of {stage_dir.name} comes before the divergence; lower the learning rate "
                "and rerun with --resume (the stage starts over; completed stages are kept; keep more with "
                "run.keep_checkpoints)")
    why = f" ({good[1]})" if good[1] else ""
    return (f"{moved}last good checkpoint: {good[0]}{why}; lower the learning rate and rerun with --resume "
            "--allow-optim-change")


# ------------------------------------------------------------------------------------------------------ manifest
def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_manifest(folder: Path) -> Path:
    """Record size and SHA-256 of every file in ``folder``; written last, it marks the checkpoint complete."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    path = folder / MANIFEST
    with open(path, "w") as f:
        json.dump({"format": FORMAT, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return path


def verify_checkpoint(folder: Path, hashes: bool = True) -> str | None:
    """None when every file in the manifest is present with its recorded size (and hash); else a short description
    of the first problem that names the damaged file."""
    mpath = folder / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"{mpath} is missing (an interrupted write, or a checkpoint of an older gendistill)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{mpath} is unreadable"
    if manifest.get("format") != FORMAT:
        return f"{mpath}: format {manifest.get('format')!r}, this gendistill reads {FORMAT}"
    for name, rec in files.items():
        p = folder / name
        if not p.is_file():
            return f"{p} is missing"
        size = p.stat().st_size
        if size != rec["bytes"]:
            return f"{p} has {size} bytes, the manifest says {rec['bytes']}"
        if hashes and _sha256(p) != rec["sha256"]:
            return f"{p} does not match its SHA-256 in the manifest"
    return None


# ---------------------------------------------------------------------------------------------------- listing
def list_checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a manifest), oldest first."""
    return [(s, p) for s, p in _step_dirs(stage_dir) if (p / MANIFEST).exists()]


def _step_dirs(stage_dir: Path) -> list[tuple[int, Path]]:
    if not stage_dir.is_dir():
        return []
    out = []
    for p in stage_dir.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(stage_dir: Path) -> Path | None:
    cks = list_checkpoints(stage_dir)
    return cks[-1][1] if cks else None


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def find_resume_checkpoint(stage_dir: Path, clean: bool = True, warn: Callable[[str], None] = _warn) -> Path | None:
    """The newest intact checkpoint of a stage. Damaged or incomplete newer ones are skipped with a one-line
    warning each; ``clean`` (rank 0) also removes the temporary folders of interrupted writes."""
    if clean:
        for p in stage_dir.iterdir() if stage_dir.is_dir() else ():
            if _TMP_RE.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
    cands = _step_dirs(stage_dir)
    for i in range(len(cands) - 1, -1, -1):
        problem = verify_checkpoint(cands[i][1])
        if problem is None:
            return cands[i][1]
        older = next((p for _, p in reversed(cands[:i])), None)
        then = f"falling back to {older.name}" if older is not None else "no older checkpoint; the stage starts over"
        warn(f"checkpoint {cands[i][1]} is damaged: {problem}; {then}")
    return None


# ----------------------------------------------------------------------------------------------------- writing
def tmp_dir_for(stage_dir: Path, step: int) -> Path:
    return stage_dir / f".tmp-step-{step:08d}"


def begin_checkpoint(tmp: Path) -> None:
    """Rank 0, before any rank writes: an empty temporary folder (debris of a killed earlier write is removed, so
    it can never be published inside this checkpoint)."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)


def write_rank_files(tmp: Path, rank: int) -> None:
    """Every rank writes its RNG state into the temporary folder (call before :func:`commit_checkpoint`)."""
    tensors, meta = rng_state()
    try:
        save_file(tensors, str(tmp / f"rng-{rank}.safetensors"), metadata=meta)
    except write_errors() as e:  # disk full, quota, read-only: safetensors raises its own type for these
        if rank == 0:  # nothing half-written stays behind (the other ranks' writes fail with it)
            shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write checkpoint {tmp.with_name(tmp.name.removeprefix('.tmp-'))}: "
                          f"{write_error_text(e)}; the older checkpoints are kept") from None


def commit_checkpoint(
    stage_dir: Path,
    step: int,
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Rank 0: write model/optimizer/state and, last, the manifest into the temporary folder, rename it into place,
    prune old ones. A write error (disk full, read-only) removes the temporary folder and is one line. ``model``
    None: the ranks already wrote model and optimizer as DCP shards (a sharded checkpoint)."""
    tmp = tmp_dir_for(stage_dir, step)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if model is not None:
            tensors, rest = optimizer_files(optimizer)
            need = tensor_bytes(model.state_dict().values()) + tensor_bytes(tensors.values())
            check_free_space(stage_dir, need, f"checkpoint {stage_dir / f'step-{step:08d}'}")
            save_model(model, str(tmp / "model.safetensors"))
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(rest, indent=1))
        with open(tmp / "state.json", "w") as f:
            json.dump({"format": FORMAT, **state}, f, indent=1)
        write_manifest(tmp)
        final = publish_dir(tmp, stage_dir / f"step-{step:08d}")
    except OutputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except write_errors() as e:  # OSError, or safetensors' SafetensorError wrapping one (a disk that filled up)
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write checkpoint {stage_dir / f'step-{step:08d}'}: {write_error_text(e)}; "
                          "the older checkpoints are kept") from None
    for _, old in list_checkpoints(stage_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------------- loading
def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "state.json").read_text())


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, rank: int = 0, load_weights: bool = True,
    sharded: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`commit_checkpoint` (safetensors + JSON only). The optimizer keeps the
    hyper-parameters it was built with (the recipe's; the schedule sets the learning rate every step), so a resume
    with deliberately changed optimisation settings uses the new ones. ``sharded``: an FSDP2 run (every rank calls
    this; the checkpoint must be a sharded one, written by any number of ranks)."""
    written_sharded = bool(read_state(path).get("sharded", False)) if (path / "state.json").is_file() else False
    if written_sharded != sharded:
        was, now = ("fsdp", "ddp") if written_sharded else ("ddp", "fsdp")
        raise CheckpointError(f"{path}: written by a run.distributed: {was} run; this run uses {now} (resume with "
                              f"run.distributed: {was}, or pass --overwrite)")
    if sharded:
        from gendistill.distill.sharded_checkpoint import load_sharded

        if load_weights:
            load_sharded(path, model, optimizer)
        rng = path / f"rng-{rank}.safetensors"
        if rng.exists():
            set_rng_state(*_read_safetensors(rng))
        return read_state(path)
    try:
        if load_weights:
            missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
            if unexpected:
                raise CheckpointError(f"{path}: checkpoint has parameters the student lacks: {unexpected[:5]}")
        if optimizer is not None:
            fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            sd = optimizer_state_from_files(load_file(str(path / "optimizer.safetensors")),
                                            json.loads((path / "optimizer.json").read_text()))
            optimizer.load_state_dict(sd)
            for group, hyper in zip(optimizer.param_groups, fresh):
                group.update(hyper)
        rng = path / f"rng-{rank}.safetensors"
        if rng.exists():
            set_rng_state(*_read_safetensors(rng))
    except (SafetensorError, ValueError, KeyError, OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot load the checkpoint into this student/optimizer ({first})") from None
    return read_state(path)


# -------------------------------------------------------------------------------------------------- fingerprints
# Stage keys that change neither the step count nor the data stream nor the model: free to change on resume.
_BOOKKEEPING = ("log_every", "eval_every", "checkpoint_every", "snapshots")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def stage_fingerprint(stage: Any, data: Any) -> dict[str, Any]:
    """What a checkpoint's stream position and training depend on. ``data``: everything but the optimisation
    settings (stage settings and data sources; a change makes the stored data position meaningless). ``optim``: the
    optimisation settings (learning rate, schedule, clipping, ...), which ``--allow-optim-change`` may change."""
    st = stage.model_dump(mode="json")
    optim = st.pop("optim")
    for k in _BOOKKEEPING:
        st.pop(k, None)
    return {"data": _hash([st, data.model_dump(mode="json")]), "optim": _hash(optim), "optim_settings": optim}


def check_resume_fingerprint(saved: Any, current: dict[str, Any], where: str, ck: Path,
                             allow_optim_change: bool, say: Callable[[str], None]) -> None:
    """Refuse (one line) to resume from ``ck`` when the stage or data settings changed, or when the optimisation
    settings changed without ``--allow-optim-change``; with it, say (and so log) which settings changed."""
    if not isinstance(saved, dict) or saved.get("data") != current["data"]:
        raise CheckpointError(
            f"{where}: the recipe's stage or data settings changed since checkpoint {ck}; its data position would no "
            "longer match. Resume with the recipe the run started with, or pass --overwrite."
        )
    if saved.get("optim") == current["optim"]:
        return
    old, new = saved.get("optim_settings") or {}, current["optim_settings"]
    diff = ", ".join(f"optim.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k)) or "optim settings"
    if not allow_optim_change:
        raise CheckpointError(
            f"{where}: optimisation settings changed since checkpoint {ck} ({diff}); pass --allow-optim-change to "
            "continue with the new ones, or resume with the recipe the run started with"
        )
    say(f"{where}: resuming from {ck} with changed optimisation settings ({diff}) (--allow-optim-change)")


def check_resume_compatible(stage_dir: Path, fingerprint: dict[str, Any], where: str, allow_optim_change: bool,
                            sharded: bool) -> None:
    """Refuse (one line), before anything of the run is written, a resume whose newest checkpoint of this stage
    cannot be continued: stage or data settings changed, optimisation settings changed without
    ``--allow-optim-change``, a DDP checkpoint under FSDP or the reverse. Reads only the state.json of the newest
    checkpoint whose files have the sizes its manifest records; the trainer verifies (hashes) and loads it later."""
    for _, path in reversed(_step_dirs(stage_dir)):
        if verify_checkpoint(path, hashes=False) is not None:
            continue  # damaged: the trainer falls back past it with a warning
        try:
            state = read_state(path)
        except (OSError, ValueError):
            continue
        if bool(state.get("sharded", False)) != sharded:
            was, now = ("fsdp", "ddp") if state.get("sharded") else ("ddp", "fsdp")
            raise CheckpointError(f"{path}: written by a run.distributed: {was} run; this run uses {now} (resume "
                                  f"with run.distributed: {was}, or pass --overwrite)")
        check_resume_fingerprint(state.get("fingerprint"), fingerprint, where, path, allow_optim_change,
                                 lambda _: None)
        return


@torch.no_grad()
def weights_fingerprint(model: nn.Module, samples: int = 256) -> str:
    """Identity of a model's weights, cheap enough for a 100B teacher: names, shapes and ``samples`` evenly spaced
    values of every tensor (rounded to bfloat16, so the same weights loaded in fp32 or bf16 agree)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)};".encode())
        flat = t.detach().reshape(-1)
        if flat.numel() and flat.is_floating_point():
            # float32 positions, as every recorded fingerprint used; past 2**24 elements the last one can round up
            # to numel (SmolLM2's 28,311,552-element embedding did): clamp it back onto the last element
            idx = torch.linspace(0, flat.numel() - 1, min(flat.numel(), samples), device=flat.device).long()
            idx.clamp_(max=flat.numel() - 1)
            h.update(flat[idx].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


_LAYOUT_KEYS = ("num_hidden_layers", "hidden_size", "layer_types", "linear_attention_type")


def student_layout(config: Any) -> dict[str, Any]:
    """The architecture fields of a student config (``HybridConfig`` or its ``config.json`` dict) that a
    checkpoint's weights depend on: layer count and width, which layers are attention, every KDA option."""
    d = config if isinstance(config, dict) else config.to_dict()
    return {k: d.get(k) for k in sorted(d) if k in _LAYOUT_KEYS or k.startswith("kda_")}
