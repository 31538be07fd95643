"""hive.toml: once this hive uses TLS, its join token never goes to a plain-HTTP queen beyond loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.hive import config


def _write(path: Path, queen_url: str, tls: bool) -> Path:
    path.write_text(f'alias = "h1"\nqueen_url = "{queen_url}"\ntoken = "t"\naddress = "10.0.0.5"\n'
                    f"tls = {'true' if tls else 'false'}\n")
    return path


def test_a_tls_hive_refuses_a_plain_http_queen_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_HOME", str(tmp_path / "home"))
    path = _write(tmp_path / "hive.toml", "http://10.0.0.1:7833", tls=True)
    with pytest.raises(config.HiveConfigError, match="in clear"):
        config.load(path)
    assert config.load(_write(path, "https://10.0.0.1:7833", tls=True)).tls
    assert config.load(_write(path, "http://127.0.0.1:7833", tls=True)).queen_url.startswith("http://127")
    assert not config.load(_write(path, "http://10.0.0.1:7833", tls=False)).tls  # no CA here: plain is all it has


def test_a_hive_holding_the_cluster_ca_refuses_plain_http_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_HOME", str(tmp_path / "home"))
    ca = config.paths.tls_dir() / "ca.pem"
    ca.parent.mkdir(parents=True)
    ca.write_text("a CA")
    with pytest.raises(config.HiveConfigError, match="rbee hive install h1"):
        config.load(_write(tmp_path / "hive.toml", "http://10.0.0.1:7833", tls=False))
