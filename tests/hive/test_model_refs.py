from __future__ import annotations

from pathlib import Path

import pytest

from rbee.common.jobs import JobFailed
from rbee.hive import model_refs
from rbee.hive.downloads import RemoteFile, catalog_name_guess, choose_files
from rbee.hive.model_refs import BUILTIN_ALIASES, BadModelRef, parse, quant_of

ALIASES = {"llama-3-8b": "bartowski/Meta-Llama-3-8B-Instruct-GGUF:Q4_K_M", "local": "/models/x.gguf"}


@pytest.mark.parametrize(
    ("text", "path", "repo", "quant", "filename", "revision"),
    [
        ("./m.gguf", Path("m.gguf"), None, None, None, None),
        ("/abs/m.gguf", Path("/abs/m.gguf"), None, None, None, None),
        ("m.gguf", Path("m.gguf"), None, None, None, None),
        ("org/repo:Q4_K_M", None, "org/repo", "Q4_K_M", None, None),
        ("org/repo", None, "org/repo", None, None, None),
        ("org/repo/sub/f-Q8_0.gguf", None, "org/repo", None, "sub/f-Q8_0.gguf", None),
        ("org/repo@v1.0:Q5_K_M", None, "org/repo", "Q5_K_M", None, "v1.0"),
        ("llama-3-8b", None, "bartowski/Meta-Llama-3-8B-Instruct-GGUF", "Q4_K_M", None, None),
        ("local", Path("/models/x.gguf"), None, None, None, None),
    ],
)
def test_parse(text: str, path: Path | None, repo: str | None, quant: str | None, filename: str | None,
               revision: str | None) -> None:
    ref = parse(text, ALIASES)
    assert (ref.path, ref.repo, ref.quant, ref.filename, ref.revision) == (path, repo, quant, filename, revision)


def test_other_names_are_catalog_names_and_garbage_is_refused() -> None:
    assert parse("tiny", ALIASES).catalog_name == "tiny"
    with pytest.raises(BadModelRef):
        parse("a b/c d", ALIASES)
    with pytest.raises(BadModelRef):
        parse("  ", ALIASES)


def test_builtin_aliases_cover_the_promised_names() -> None:
    for name in ("llama-3-8b", "llama-3-70b", "mistral-7b", "qwen2.5-coder-7b", "smollm2-135m"):
        ref = parse(name, BUILTIN_ALIASES)
        assert ref.repo and ref.quant


@pytest.mark.parametrize(
    ("filename", "quant"),
    [("Meta-Llama-3-8B-Instruct-Q4_K_M.gguf", "Q4_K_M"), ("qwen-q4_k_m-00001-of-00002.gguf", "Q4_K_M"),
     ("x.Q4_1.gguf", "Q4_1"), ("m-f16.gguf", "F16"), ("m-IQ2_XS.gguf", "IQ2_XS"), ("nothing.gguf", None)],
)
def test_quant_of(filename: str, quant: str | None) -> None:
    assert quant_of(filename) == quant


def _files(*names: str) -> list[RemoteFile]:
    return [RemoteFile(n, 10, None) for n in names]


def test_choose_files_by_quant_split_and_file() -> None:
    files = _files("m-Q4_K_M.gguf", "m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf", "mmproj-Q8_0.gguf",
                   "README.md")
    assert [f.path for f in choose_files(parse("o/r", {}), files)[0]] == ["m-Q4_K_M.gguf"]
    chosen, quant = choose_files(parse("o/r:q8_0", {}), files)
    assert [f.path for f in chosen] == ["m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf"] and quant == "Q8_0"
    by_file = choose_files(parse("o/r/m-Q8_0-00002-of-00002.gguf", {}), files)[0]
    assert len(by_file) == 2
    with pytest.raises(JobFailed, match="available quantizations: Q4_K_M, Q8_0"):
        choose_files(parse("o/r:Q2_K", {}), files)
    with pytest.raises(JobFailed, match="incomplete on the hub"):
        choose_files(parse("o/r:Q8_0", {}), _files("m-Q8_0-00001-of-00003.gguf", "m-Q8_0-00002-of-00003.gguf"))
    with pytest.raises(JobFailed, match=r"no \.gguf files"):
        choose_files(parse("o/r", {}), _files("model.safetensors"))


def test_catalog_name_guess() -> None:
    assert catalog_name_guess(parse("o/r", {})) == "o/r:Q4_K_M"
    assert catalog_name_guess(parse("o/r:q8_0", {})) == "o/r:Q8_0"
    assert catalog_name_guess(parse("llama-3-8b", ALIASES)) == "llama-3-8b"


def test_a_home_folder_of_a_user_that_does_not_exist_is_a_bad_name_not_a_crash() -> None:
    # Found by fuzzing the queen's API: Path.expanduser raised RuntimeError, a 500.
    with pytest.raises(BadModelRef, match="no-such-user-here"):
        parse("~no-such-user-here/model.gguf", {})


@pytest.mark.parametrize("name", ["a/..", "../b", "a/../x.gguf", "org/repo/../../etc/x.gguf"])
def test_names_that_would_climb_out_of_the_models_folder_are_refused(name: str) -> None:
    ref = None
    try:
        ref = parse(name, {})
    except BadModelRef:
        return
    assert ref.repo is None  # understood as something else (a path the user gave), never as a hub repo


def test_hub_file_names_must_stay_inside_the_models_folder() -> None:
    from rbee.hive.downloads import stays_inside

    assert stays_inside("m-Q4_K_M.gguf") and stays_inside("sub/dir/m.gguf")
    for bad in ("../m.gguf", "/etc/m.gguf", "a/../../m.gguf", "", "a//m.gguf", "..\\\\m.gguf"):
        assert not stays_inside(bad), bad


def test_settings_written_at_once_are_all_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from rbee.contracts.models import ModelSettings
    from rbee.hive import model_refs

    monkeypatch.setenv("RBEE_HOME", str(tmp_path))
    names = [f"model-{i}" for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: model_refs.save_model_settings(n, ModelSettings(slots=2)), names))
    assert sorted(model_refs.all_model_settings()) == sorted(names)


def test_the_models_file_moves_with_rbee_home_and_xdg_config_home(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    for home in ("a", "b", "a"):  # the path is remembered per setting, never across a change
        monkeypatch.setenv("RBEE_HOME", str(tmp_path / home))
        assert model_refs.user_aliases_file() == tmp_path / home / "config" / "models.toml"
    monkeypatch.delenv("RBEE_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert model_refs.user_aliases_file() == tmp_path / "xdg" / "rbee" / "models.toml"
