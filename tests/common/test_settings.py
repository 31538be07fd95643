"""Settings from the environment: RBEE_WORKER_MAX_CONTEXT, which a longer prompt may go beyond."""

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
