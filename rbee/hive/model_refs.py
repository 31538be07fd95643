"""What a user may call a model, and what that name points at.

    ./model.gguf, /abs/path.gguf, ~/m.gguf   a file on the hive
    org/repo:QUANT                           a Hugging Face GGUF repo and a quantization (as llama-server's -hf)
    org/repo                                 the same, Q4_K_M when the repo has it
    org/repo/path/file.gguf                  one file of a repo (the first part, for a split model)
    org/repo/path/ggml-NAME.bin              a whisper.cpp speech model (one file)
    org/repo@revision...                     any of the two above, at a branch, tag or commit
    alias                                    a short name from the built-in list or ~/.config/rbee/models.toml
    name                                     anything else: a name in the hive's catalog

Ollama's names for Hugging Face models (`hf.co/org/repo:QUANT`, `huggingface.co/...`, `:latest` for the
default quantization) become rbee's as the Ollama API's requests are read (rbee/contracts/ollama.py).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rbee.common import paths
from rbee.contracts.models import ModelSettings
from rbee.hive.models_file import ModelsFile, UnreadableFile

DEFAULT_QUANT = "Q4_K_M"

BUILTIN_ALIASES: dict[str, str] = {
    "llama-3-8b": "bartowski/Meta-Llama-3-8B-Instruct-GGUF:Q4_K_M",
    "llama-3-70b": "bartowski/Meta-Llama-3-70B-Instruct-GGUF:Q4_K_M",
    "mistral-7b": "bartowski/Mistral-7B-Instruct-v0.3-GGUF:Q4_K_M",
    "qwen2.5-coder-7b": "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M",
    "smollm2-135m": "bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M",
}

_REPO = r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)"
_REV = r"(?:@(?P<rev>[\w./-]+?))?"
_HF_QUANT = re.compile(rf"^(?:hf://)?{_REPO}{_REV}(?::(?P<quant>[\w.-]+))?$")
_HF_FILE = re.compile(rf"^(?:hf://)?{_REPO}{_REV}/(?P<file>[^@:]+\.(?:gguf|bin))$")  # .bin: whisper.cpp's ggml


class BadModelRef(ValueError):
    """A name that cannot be understood, or an alias file that cannot be read."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model name. Exactly one of `path`, `repo` or `catalog_name` is set."""

    text: str
    path: Path | None = None
    repo: str | None = None
    revision: str | None = None
    quant: str | None = None
    filename: str | None = None
    catalog_name: str | None = None

    @property
    def is_hub(self) -> bool:
        return self.repo is not None


def user_aliases_file() -> Path:
    """~/.config/rbee/models.toml, or where RBEE_HOME (or XDG_CONFIG_HOME) puts it: asked once or twice per
    request, and building the Path costs more than looking up the variables it comes from."""
    return _aliases_file(os.environ.get("RBEE_HOME"), os.environ.get("XDG_CONFIG_HOME"), os.environ.get("HOME"))


@functools.lru_cache(maxsize=16)
def _aliases_file(*_variables: str | None) -> Path:
    return paths.config_dir() / "models.toml"


models_file = ModelsFile(user_aliases_file)  # a daemon refreshes it every second, supervised
_write_lock = threading.Lock()


def _models_toml() -> dict[str, Any]:
    """~/.config/rbee/models.toml, parsed ({} when there is none): from memory on the event loop."""
    try:
        return models_file.parsed()
    except UnreadableFile as exc:
        raise BadModelRef(str(exc)) from exc


def load_aliases() -> dict[str, str]:
    """Built-in aliases, extended or overridden by the `[aliases]` table of ~/.config/rbee/models.toml."""
    aliases = dict(BUILTIN_ALIASES)
    table = _models_toml().get("aliases", {})
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise BadModelRef(f"{user_aliases_file()}: [aliases] must map names to strings like \"org/repo:Q4_K_M\"")
    aliases.update(table)
    return aliases


_NO_SETTINGS = ModelSettings()
_validated: tuple[dict[str, Any], dict[str, ModelSettings]] = ({}, {})  # (the parsed file, its tables checked)


def model_settings(name: str) -> ModelSettings:
    """The `[models."NAME"]` table of ~/.config/rbee/models.toml (all unset when there is none): asked on every
    request, so a table is checked once per read of the file (the copy is shared: callers do not change it)."""
    global _validated
    parsed, known = _models_toml(), _validated
    if known[0] is not parsed:  # (a thread reading another version of the file keeps to its own pair)
        known = _validated = (parsed, {})
    found = known[1].get(name)
    if found is not None:
        return found
    table = parsed.get("models", {}).get(name)
    if table is None:
        return _NO_SETTINGS
    try:
        found = known[1][name] = ModelSettings.model_validate(table)
        return found
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadModelRef(f"{user_aliases_file()}: [models.\"{name}\"] {where}: {first['msg']}") from exc


def all_model_settings() -> dict[str, ModelSettings]:
    """Every `[models."NAME"]` table of ~/.config/rbee/models.toml."""
    tables = _models_toml().get("models", {})
    if not isinstance(tables, dict):
        raise BadModelRef(f"{user_aliases_file()}: [models] must hold one table per model name")
    return {name: model_settings(name) for name in tables}


def save_model_settings(name: str, own: ModelSettings) -> None:
    """Write (or, when all unset, remove) `[models."NAME"]` in ~/.config/rbee/models.toml, keeping the rest of
    the file, comments included. Blocking: call it from a thread. Writes are serialized: two at once
    (two `PUT /v1/settings/models/...`) each read what the other wrote, so neither is lost."""
    with _write_lock:
        _save(name, own)


def _save(name: str, own: ModelSettings) -> None:
    import tomlkit  # only a settings write needs it (reading is tomllib): the daemons start without it
    from tomlkit.exceptions import TOMLKitError

    path = user_aliases_file()
    try:
        doc = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
    except (TOMLKitError, OSError) as exc:
        raise BadModelRef(f"cannot read {path}: {exc}") from exc
    models = doc.get("models")
    if models is None:
        models = tomlkit.table(is_super_table=True)
        doc["models"] = models
    if own.is_empty():
        models.pop(name, None)
    else:
        table = tomlkit.table()
        table.update(own.model_dump(exclude_none=True))
        models[name] = table
    paths.write_private(path, tomlkit.dumps(doc).encode())
    models_file.check(force=True)  # the next request has it, on the event loop too


def looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or (text.endswith(".gguf") and text.count("/") < 2)


def parse(text: str, aliases: dict[str, str] | None = None) -> ModelRef:
    """Understand a model name (aliases are expanded once)."""
    text = text.strip()
    if not text:
        raise BadModelRef("empty model name")
    if looks_like_path(text):
        try:
            return ModelRef(text=text, path=Path(text).expanduser())
        except RuntimeError as exc:  # ~name of a user this machine does not have
            raise BadModelRef(f"{text!r}: {exc}") from exc
    aliases = load_aliases() if aliases is None else aliases
    if text in aliases:
        target = parse(aliases[text], aliases={})
        if target.path is None and target.repo is None:
            raise BadModelRef(f"alias {text!r} points at {aliases[text]!r}, which is not a repo or a file")
        return ModelRef(text=text, path=target.path, repo=target.repo, revision=target.revision,
                        quant=target.quant, filename=target.filename)
    if (match := _HF_FILE.match(text)) and _plain_repo(match["repo"]) and ".." not in match["file"].split("/"):
        return ModelRef(text=text, repo=match["repo"], revision=match["rev"], filename=match["file"])
    if "/" in text and (match := _HF_QUANT.match(text)) and _plain_repo(match["repo"]):
        return ModelRef(text=text, repo=match["repo"], revision=match["rev"], quant=match["quant"])
    if "/" in text:
        raise BadModelRef(f"{text!r} is neither a file path nor a Hugging Face name like org/repo:Q4_K_M")
    return ModelRef(text=text, catalog_name=text)


def _plain_repo(repo: str) -> bool:
    """org/name, neither of them '.' or '..' (the repo becomes a folder under the models folder)."""
    return all(part not in (".", "..") for part in repo.split("/"))


def quant_of(filename: str) -> str | None:
    """The quantization named in a GGUF file name (`...-Q4_K_M.gguf` -> `Q4_K_M`)."""
    match = re.search(r"(?:^|[-_.])((?:I?Q\d(?:_[A-Z0-9]+)*)|F16|BF16|F32)(?:-\d{5}-of-\d{5})?\.gguf$",
                      Path(filename).name, re.IGNORECASE)
    return match.group(1).upper() if match else None
