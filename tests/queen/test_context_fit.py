"""Which context a request needs, and which workers have it (rbee/queen/context_fit.py)."""

from __future__ import annotations

import pytest

from rbee.queen.context_fit import Larger, exceeded, larger, needed_for, satisfies

LLAMA_SAYS = "request (1050 tokens) exceeds the available context size (512 tokens), try increasing it"


def test_the_numbers_come_from_llama_servers_own_message() -> None:
    assert exceeded(LLAMA_SAYS) == (1050, 512)
    assert exceeded("input (700 tokens) is larger than the max context size (512 tokens). skipping") == (700, 512)
    assert exceeded("the model is loading") is None
    assert exceeded("request (many tokens) exceeds the available context size (512 tokens)") is None


@pytest.mark.parametrize(("tokens", "context"), [(1, 16), (15, 16), (16, 32), (1000, 1024), (1023, 1024),
                                                 (1024, 2048), (4573, 8192)])
def test_a_prompt_asks_for_the_next_power_of_two_above_its_tokens(tokens: int, context: int) -> None:
    assert needed_for(tokens) == context


def test_a_worker_satisfies_a_request_with_its_context_or_its_models_whole_trained_context() -> None:
    assert satisfies(512, None, 2048)  # a request that needs nothing in particular
    assert satisfies(1024, 1024, 2048) and satisfies(2048, 1024, 2048)
    assert not satisfies(512, 1024, 2048)
    assert satisfies(2048, 4096, 2048)  # no worker of that model gets more than it was trained for
    assert not satisfies(1024, 4096, 2048)
    assert not satisfies(1024, 4096, None) and satisfies(4096, 4096, None)


def test_a_longer_prompt_gets_a_larger_context_up_to_the_trained_one() -> None:
    assert larger("tiny", 1050, 512, 2048, 32768, None) == Larger(2048)
    assert larger("tiny", 1000, 512, 2048, 32768, None) == Larger(1024)
    assert larger("tiny", 1500, 1024, 2048, 32768, None) == Larger(2048)  # the power of two, capped
    assert larger("nohdr", 5000, 4096, None, 32768, None) == Larger(8192)  # no trained context: at most the max


def test_a_prompt_over_the_trained_context_names_the_numbers() -> None:
    choice = larger("tiny", 3000, 512, 2048, 32768, None)
    assert choice.context is None
    assert "512 tokens per slot" in choice.why and "trained for 2048" in choice.why and "3000" in choice.why
    assert "RBEE_WORKER_CONTEXT" in choice.why and "models.toml" in choice.why


def test_without_a_trained_context_the_cap_is_rbee_worker_max_context() -> None:
    choice = larger("nohdr", 5000, 4096, None, 4096, None)
    assert choice.context is None and "RBEE_WORKER_MAX_CONTEXT" in choice.why and "4096" in choice.why


def test_a_context_set_by_hand_is_kept() -> None:
    choice = larger("tiny", 1050, 512, 2048, 32768, "RBEE_WORKER_CONTEXT")
    assert choice.context is None
    assert choice.why.startswith("the worker of 'tiny' has 512 tokens per slot, set by RBEE_WORKER_CONTEXT")
    assert "trained for 2048" in choice.why
