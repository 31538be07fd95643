"""Settings from the environment: RBEE_WORKER_MAX_CONTEXT, which a longer prompt may go beyond, the spread
bounds, and RBEE_WORKER_CACHE_RAM_MIB."""

from __future__ import annotations

import pytest

from rbee.common import settings


def test_rbee_worker_max_context_defaults_to_32768_and_may_be_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_WORKER_MAX_CONTEXT", raising=False)
    assert settings.max_context() == 32768
    monkeypatch.setenv("RBEE_WORKER_MAX_CONTEXT", "512")
    assert settings.max_context() == 512


@pytest.mark.parametrize(("raw", "said"), [("100", "must be at least 256"), ("0", "must be at least 256"),
                                           ("big", "is not a whole number"), ("4k", "is not a whole number")])
def test_a_bad_rbee_worker_max_context_is_named(monkeypatch: pytest.MonkeyPatch, raw: str, said: str) -> None:
    monkeypatch.setenv("RBEE_WORKER_MAX_CONTEXT", raw)
    with pytest.raises(settings.SettingsError, match=f"RBEE_WORKER_MAX_CONTEXT='{raw}' {said}"):
        settings.max_context()


def test_the_spread_bounds_default_to_5_ms_and_100_mbps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_SPREAD_MAX_RTT_MS", raising=False)
    monkeypatch.delenv("RBEE_SPREAD_MIN_MBPS", raising=False)
    assert settings.spread_bounds() == (5.0, 100.0)
    monkeypatch.setenv("RBEE_SPREAD_MAX_RTT_MS", "20")
    monkeypatch.setenv("RBEE_SPREAD_MIN_MBPS", "10")
    assert settings.spread_bounds() == (20.0, 10.0)


@pytest.mark.parametrize(("name", "raw", "said"), [("RBEE_SPREAD_MAX_RTT_MS", "0", "must be between 1 and 10000"),
                                                   ("RBEE_SPREAD_MIN_MBPS", "fast", "is not a whole number")])
def test_a_bad_spread_bound_is_named(monkeypatch: pytest.MonkeyPatch, name: str, raw: str, said: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(settings.SettingsError, match=f"{name}='{raw}' {said}"):
        settings.spread_bounds()


def test_the_workers_prompt_cache_in_ram_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_WORKER_CACHE_RAM_MIB", raising=False)
    assert settings.worker_cache_ram_mib() == 0
    monkeypatch.setenv("RBEE_WORKER_CACHE_RAM_MIB", "1024")
    assert settings.worker_cache_ram_mib() == 1024


@pytest.mark.parametrize(("raw", "said"), [("-1", "must be between 0 and 1048576"), ("8GiB", "is not a whole number")])
def test_a_bad_rbee_worker_cache_ram_mib_is_named(monkeypatch: pytest.MonkeyPatch, raw: str, said: str) -> None:
    monkeypatch.setenv("RBEE_WORKER_CACHE_RAM_MIB", raw)
    with pytest.raises(settings.SettingsError, match=f"RBEE_WORKER_CACHE_RAM_MIB='{raw}' {said}"):
        settings.worker_cache_ram_mib()
