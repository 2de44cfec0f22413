"""``gendistill chat``: answer one chat-templated prompt with the teacher and each student, side by side."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import typer
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from gendistill.cli_utils import console
from gendistill.devices import DEVICE_HELP, DTYPE_HELP, resolve_device, resolve_dtype
from gendistill.errors import GendistillError
from gendistill.limits import MAX_NEW_TOKENS, check_range
from gendistill.models.loading import load_model, model_label, resolve_model

#: the sampling settings of ``--sample`` (Qwen3's recommended non-thinking ones)
SAMPLING = dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20)


@dataclass
class Reply:
    text: str
    new_tokens: int
    seconds: float


def reply(model: Any, tokenizer: Any, spec: str, messages: list[dict[str, str]], device: torch.device,
          max_new_tokens: int, sample: bool, seed: int) -> Reply:
    """The model's answer to ``messages`` (through its tokenizer's chat template; greedy unless ``sample``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise GendistillError(f"the tokenizer of {spec} has no chat template")
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True).to(device)
    except Exception as e:  # noqa: BLE001 - the template is the model's code (raise_exception, a bad role, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GendistillError(f"the chat template of {spec} failed on this prompt: {first[:300]}") from None
    torch.manual_seed(seed)
    kwargs = SAMPLING if sample else dict(do_sample=False)
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
                                or tokenizer.eos_token_id, **kwargs)
    seconds = time.perf_counter() - start
    new = output[0, ids["input_ids"].shape[1]:]
    return Reply(tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), seconds)


def chat_command(
    prompt: str = typer.Option(..., "--prompt", "-p", help="User message."),
    teacher: str = typer.Option(None, "--teacher", "-t", help="Teacher: short name, .gguf, folder or hub id."),
    student: list[str] = typer.Option([], "--student", "-s", help="Student folder(s) or hub id(s); repeat the option "
                                                                   "for several."),
    system: str = typer.Option(None, help="Optional system message."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate."),
    sample: bool = typer.Option(False, help="Sample (temperature 0.7, top-p 0.8, top-k 20) instead of greedy."),
    seed: int = typer.Option(0, help="Sampling seed."),
    dtype: str = typer.Option("auto", help=f"Model dtype: {DTYPE_HELP}."),
    device: str = typer.Option("auto", help=f"Device: {DEVICE_HELP}."),
) -> None:
    """Answer one chat-templated prompt with the teacher and each student, side by side."""
    specs = ([teacher] if teacher else []) + list(student)
    if not specs:
        raise GendistillError("give at least one --teacher or --student")
    check_range(max_new_tokens, 1, MAX_NEW_TOKENS, "--max-new-tokens")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)  # both checked before any model is loaded
    for flag, spec in [("--teacher", teacher)] * bool(teacher) + [("--student", s) for s in student]:
        kind = resolve_model(spec).kind  # each panel is labelled by its flag: the flag must say what the model is
        if flag == "--student" and kind not in ("student", "hub"):
            raise GendistillError(f"--student: {spec} is not a gendistill student (a folder saved by convert or "
                                  "distill); pass a teacher as --teacher")
        if flag == "--teacher" and kind == "student":
            raise GendistillError(f"--teacher: {spec} is a gendistill student; pass it as --student")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    for spec in specs:
        model, tokenizer = load_model(spec, dtype=dt, device=dev)
        out = reply(model, tokenizer, spec, messages, dev, max_new_tokens, sample, seed)
        kind = "student" if spec in student else "teacher"
        # the model's text is shown as written: '[bold]' or '[/]' in a reply is text, not rich markup
        console.print(Panel(Text(out.text) if out.text else Text("(empty)", style="dim"),
                            title=escape(f"{kind}: {model_label(spec)}"),
                            subtitle=f"{out.new_tokens} tokens, {out.new_tokens / out.seconds:.1f} tok/s on {dev}"))


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_command)
