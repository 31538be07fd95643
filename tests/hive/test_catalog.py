from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from rbee.contracts.models import kind_of
from rbee.hive.catalog import Catalog, name_for_file
from rbee.hive.gguf_info import FILE_TYPES, NotAGGUFError, read_summary


def _write_gguf(path: Path, arch: str, tensor: str, file_type: int | None = None) -> Path:
    """A GGUF file of one small tensor, with `arch` as its general.architecture ("" for none)."""
    writer = GGUFWriter(str(path), arch)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tensor(tensor, np.zeros(4, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_names_for_files() -> None:
    assert name_for_file(Path("/m/SmolLM2-135M-Instruct.Q4_1.gguf")) == "smollm2-135m-instruct.q4_1"
    assert name_for_file(Path("my model (final).gguf")) == "my-model-final"


def test_gguf_header_summary(tiny_model: Path) -> None:
    summary = read_summary(tiny_model)
    assert summary.architecture == "llama"
    assert summary.context_length == 2048
    assert summary.pooling == "mean"


def test_not_a_gguf_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"nope")
    with pytest.raises(NotAGGUFError, match="not a GGUF model file"):
        read_summary(junk)
    with pytest.raises(NotAGGUFError, match="no such file"):
        read_summary(tmp_path / "absent.gguf")


@pytest.mark.parametrize("content", [b"root:*:20000:0:99999:7:::\ndaemon:*:20000\n",
                                     b"GGUF\x03\x00\x00\x00" + b"\xff" * 16 + b"secret-bytes-here"])
def test_errors_never_quote_the_file(tmp_path: Path, content: bytes) -> None:
    # A shadow-like file gave "magic 0x746f6f72" (b"root"); a damaged header quoted what struct saw.
    secret = tmp_path / "shadow"
    secret.write_bytes(content)
    with pytest.raises(NotAGGUFError) as caught:
        read_summary(secret)
    message = str(caught.value)
    assert "not a GGUF model file" in message
    for leak in ("root", "0x", "746f6f72", "secret", "daemon", "\\x"):
        assert leak not in message.replace(str(tmp_path), ""), message


async def test_catalog_survives_reopening_and_notices_missing_files(tmp_path: Path, tiny_model: Path) -> None:
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_model.read_bytes())
    db = tmp_path / "catalog.sqlite"
    entry = await Catalog(db).add_file(copy, "mine")
    assert entry.architecture == "llama" and entry.size_bytes == copy.stat().st_size
    assert entry.header["block_count"] == 2 and entry.header["head_count_kv"] == 2  # kept: no re-reading

    reopened = Catalog(db)
    assert [e.name for e in await reopened.entries()] == ["mine"]
    assert (await reopened.find_path(copy)) is not None
    await reopened.touch("mine")
    got = await reopened.get("mine")
    assert got is not None and got.last_used_at is not None and not got.missing

    copy.unlink()
    got = await reopened.get("mine")
    assert got is not None and got.missing
    assert await reopened.remove("mine")
    assert await reopened.get("mine") is None
    assert not await reopened.remove("mine")


async def test_two_files_with_the_same_name_get_distinct_names(tmp_path: Path, tiny_model: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.gguf").write_bytes(tiny_model.read_bytes())
    first = await catalog.add_file(tmp_path / "a" / "model.gguf")
    second = await catalog.add_file(tmp_path / "b" / "model.gguf")
    again = await catalog.add_file(tmp_path / "a" / "model.gguf")
    assert (first.name, second.name, again.name) == ("model", "model-2", "model")
    assert len(await catalog.entries()) == 2


def test_header_reader_agrees_with_ggufreader(tiny_model: Path, tmp_path: Path) -> None:
    import gguf

    from rbee.hive.service import demo_model_file

    for path in [tiny_model, *([demo_model_file()] if demo_model_file() else [])]:
        assert path is not None
        reference = gguf.GGUFReader(str(path))
        summary = read_summary(path)
        arch = reference.get_field("general.architecture").contents()  # type: ignore[union-attr]
        assert summary.architecture == arch
        assert summary.block_count == reference.get_field(f"{arch}.block_count").contents()  # type: ignore[union-attr]
        assert summary.vocab_size == len(reference.get_field("tokenizer.ggml.tokens").data)  # type: ignore[union-attr]
        assert summary.parameter_count == sum(int(t.n_elements) for t in reference.tensors)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(NotAGGUFError, match="not a GGUF model file"):
        read_summary(truncated)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(NotAGGUFError, match="not a GGUF model file"):
        read_summary(empty)


def test_file_type_names_match_the_gguf_package(tmp_path: Path) -> None:
    """rbee keeps llama.cpp's file-type names in a table (the daemon does not import gguf); it must say what the
    installed gguf package says, and a file of each type reads back with that name."""
    from gguf import LlamaFileType

    assert FILE_TYPES == {int(kind): kind.name.removeprefix("MOSTLY_") for kind in LlamaFileType}
    for number, name in [(15, "Q4_K_M"), (1024, "GUESSED"), (99, "type 99")]:
        path = _write_gguf(tmp_path / f"{number}.gguf", "llama", "token_embd.weight", file_type=number)
        assert read_summary(path).quantization == name


@pytest.mark.parametrize(("tensor", "kind"), [("model.diffusion_model.input_blocks.0.0.weight", "image"),
                                              ("cond_stage_model.transformer.x.weight", "text")])
def test_a_gguf_of_diffusion_tensors_is_an_image_model(tmp_path: Path, tensor: str, kind: str) -> None:
    path = _write_gguf(tmp_path / "sd.gguf", "", tensor)  # as sd.cpp's conversions: no general.architecture
    summary = read_summary(path)
    assert kind_of(summary.architecture, summary.pooling) == kind
    assert (summary.architecture == "stable-diffusion") == (kind == "image")
