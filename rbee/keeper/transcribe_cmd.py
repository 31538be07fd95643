"""`rbee transcribe FILE -m MODEL`: speech to text through the queen's /v1/audio routes; prints the text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rbee.contracts.openai import HIVE_HEADER
from rbee.keeper.context import App
from rbee.keeper.output import CLIError

FORMATS = ("text", "json", "srt", "vtt", "verbose_json")


def transcribe(
    file: Annotated[Path, typer.Argument(help="The recording: WAV, MP3 or FLAC.")],
    model: Annotated[str, typer.Option("-m", "--model", help="A speech (whisper.cpp ggml) model: a catalog name, "
                                       "or a path to its .bin file.")],
    response_format: Annotated[str, typer.Option("--format", help="text (default), json, srt, vtt or "
                                                 "verbose_json.")] = "text",
    language: Annotated[str | None, typer.Option("-l", "--language", help="The spoken language (ISO-639-1, "
                                                 "e.g. en), for a multilingual model.")] = None,
    translate: Annotated[bool, typer.Option("--translate", help="Translate into English.")] = False,
    hive: Annotated[str | None, typer.Option("-a", "--hive", help="Run on this hive (alias).")] = None,
) -> None:
    """Transcribe a recording (or, with --translate, translate it into English) and print the text."""
    ctx = App()
    if response_format not in FORMATS:
        raise CLIError(f"--format takes one of: {', '.join(FORMATS)}; not {response_format!r}")
    if not file.is_file():
        raise CLIError(f"no such file: {file}")
    path = Path(model).expanduser()
    name = str(path.resolve()) if model.startswith(("/", "./", "../", "~")) else model
    fields = {"model": name, "response_format": response_format}
    if language:
        fields["language"] = language
    client = ctx.queen()
    route = "/v1/audio/translations" if translate else "/v1/audio/transcriptions"
    with file.open("rb") as audio, ctx.out.err.status(f"waiting for {model} (it loads on first use)…"):
        resp = client.upload(route, fields, {"file": (file.name, audio)}, timeout=None,
                             headers={HIVE_HEADER: hive} if hive else {})
    ctx.out.out.file.write(resp.text.rstrip("\n") + "\n")
