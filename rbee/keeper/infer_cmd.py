"""`rbee infer`: one prompt, tokens streamed to the terminal as they come; for an image model, the PNG it draws
written to a file whose path is printed."""

from __future__ import annotations

import base64
import binascii
import json
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import typer

from rbee.contracts.models import DEMO_MODEL, kind_of
from rbee.contracts.openai import HIVE_HEADER
from rbee.hive import downloads, model_refs
from rbee.hive.gguf_info import NotAGGUFError, read_summary
from rbee.keeper.client import QueenClient
from rbee.keeper.context import App
from rbee.keeper.model_pull import pull_model
from rbee.keeper.output import CLIError, Output


def _model_arg(client: QueenClient, out: Output, model: str, hive: str | None) -> str:
    """What to put in the request's `model`: a local file as an absolute path, a hub name pulled
    first (with progress) and named as the catalog names it, anything else unchanged. A hub name no hive
    has is pulled onto the pinned hive, else where the queen chooses (where it would run best: the only
    hive that then holds it, so the worker starts there)."""
    try:
        ref = model_refs.parse(model)
    except model_refs.BadModelRef as exc:
        raise CLIError(str(exc)) from exc
    if ref.path is not None:
        if not ref.path.is_file():
            raise CLIError(f"no such model file: {ref.path}")
        return str(ref.path.resolve())
    if ref.is_hub and not (client.has_model(model) if hive is None else _on_hive(client, ref, hive)):
        return str(pull_model(client, out, model, hive).get("name", model))
    return model


def _on_hive(client: QueenClient, ref: model_refs.ModelRef, hive: str) -> bool:
    """Whether the pinned hive's catalog holds the hub model (another hive having it is not enough)."""
    names = {ref.text, downloads.catalog_name_guess(ref)}
    return any(m["name"] in names and not m["missing"]
               for m in client.get(f"/v1/catalog?{urlencode({'hive': hive})}"))


def infer(
    prompt: Annotated[str, typer.Option("-p", "--prompt", help="What to ask.")],
    model: Annotated[str, typer.Option("-m", "--model", help="A catalog name or a path to a .gguf file.")]
    = DEMO_MODEL,
    hive: Annotated[str | None, typer.Option("-a", "--hive", help="Run on this hive (alias). Left out, a hub "
                                             "model no hive has is pulled where it would run best first.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="Stop after this many tokens.")]
    = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.0, max=2.0,
                                                      help="Sampling temperature, 0.0-2.0.")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for reproducible sampling.")] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole response object, not a stream.")]
    = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="An image model's PNG goes here "
                                                "(default: rbee-image-TIME.png in this folder).")] = None,
    size: Annotated[str, typer.Option("--size", help="An image's WIDTHxHEIGHT.")] = "512x512",
) -> None:
    """Ask a model something; the tokens stream back as they are generated. An image model draws the prompt
    instead: the PNG is written to a file (-o) and its path printed.

    The queen starts itself if it is not running, and loads the model on first use.
    """
    ctx = App()
    client = ctx.queen()
    target = _model_arg(client, ctx.out, model, hive)
    if _kind(client, target) == "image":
        _image(ctx, {"model": target, "prompt": prompt, "size": size, **({"seed": seed} if seed is not None else {})},
               hive, output or Path(f"rbee-image-{time.strftime('%Y%m%d-%H%M%S')}.png"))
        return
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    body: dict[str, Any] = {"model": target, "messages": messages}
    for key, value in (("max_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p),
                       ("seed", seed)):
        if value is not None:
            body[key] = value
    headers = {HIVE_HEADER: hive} if hive else {}
    if as_json:
        with ctx.out.err.status(f"waiting for {model}…"):
            response = client.request("POST", "/v1/chat/completions", json=body, headers=headers, timeout=None)
        ctx.out.json(response)
        return
    body.update(stream=True, stream_options={"include_usage": True})
    _stream(ctx, body, headers, model)


def _stream(ctx: App, body: dict[str, Any], headers: dict[str, str], model: str) -> None:
    started = time.monotonic()
    first: float | None = None
    usage: dict[str, Any] | None = None
    status = ctx.out.err.status(f"waiting for {model} (it loads on first use)…")
    status.start()
    try:
        for line in ctx.client.stream_lines("POST", "/v1/chat/completions", json=body, headers=headers):
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise CLIError(str(chunk["error"].get("message", chunk["error"])))
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if first is None:
                        first = time.monotonic()
                        status.stop()
                    ctx.out.out.file.write(text)
                    ctx.out.out.file.flush()
    except ValueError as exc:
        raise CLIError(f"the queen sent something that is not JSON mid-stream ({exc})") from exc
    finally:
        status.stop()
    ctx.out.out.file.write("\n")
    if usage and first is not None:
        elapsed = time.monotonic() - first
        tokens = usage.get("completion_tokens", 0)
        rate = f", {tokens / elapsed:.0f} tokens/s" if elapsed > 0 and tokens > 1 else ""
        ctx.out.err.print(f"[dim]{tokens} tokens, first after {first - started:.2f} s{rate}[/dim]")


def _kind(client: QueenClient, model: str) -> str:
    """The model's kind: a file's from its header, read here; a name's as the queen lists it."""
    if model_refs.looks_like_path(model):
        try:
            summary = read_summary(Path(model))
        except NotAGGUFError:
            return "text"  # the queen names what is wrong with it
        return kind_of(summary.architecture, summary.pooling)
    return client.model_kind(model) or "text"


def _image(ctx: App, body: dict[str, Any], hive: str | None, output: Path) -> None:
    """Draw `body`'s prompt; the PNG is written to `output`, whose path goes to stdout."""
    headers = {HIVE_HEADER: hive} if hive else {}
    with ctx.out.err.status(f"drawing with {body['model']} (it loads on first use)…"):
        response = ctx.client.request("POST", "/v1/images/generations", json=body, headers=headers, timeout=None)
    try:
        png = base64.b64decode(response["data"][0]["b64_json"], validate=True)
    except (KeyError, IndexError, TypeError, binascii.Error) as exc:
        raise CLIError("the queen's answer carries no image") from exc
    try:
        output.write_bytes(png)
    except OSError as exc:
        raise CLIError(f"cannot write {output}: {exc.strerror or exc}") from exc
    ctx.out.out.print(str(output.resolve()), soft_wrap=True)
