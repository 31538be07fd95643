"""The context a model gets when nobody set one: its trained context, as memory allows."""

from __future__ import annotations

import pytest

from rbee.hive.estimate import MIN_AUTO_CONTEXT, estimate, fitting_context
from rbee.hive.gguf_info import GGUFSummary

GiB = 2**30
SEVEN_B = GGUFSummary(architecture="llama", context_length=131072, block_count=32, embedding_length=4096,
                      head_count=32, head_count_kv=8, key_length=128, value_length=128, vocab_size=128256)
WEIGHTS = 4 * GiB


def test_the_trained_context_when_memory_is_plenty() -> None:
    small = GGUFSummary(architecture="llama", context_length=8192, block_count=30, embedding_length=576,
                        head_count=9, head_count_kv=3, key_length=64, value_length=64, vocab_size=49152)
    assert fitting_context(small, 100 * 2**20, 4, 64 * GiB, 32768, 4096) == 8192


def test_at_most_the_cap() -> None:
    assert fitting_context(SEVEN_B, WEIGHTS, 1, 1024 * GiB, 32768, 4096) == 32768


@pytest.mark.parametrize("room_gib", [8, 10, 16])
def test_halved_until_it_fits_in_the_room(room_gib: int) -> None:
    context = fitting_context(SEVEN_B, WEIGHTS, 4, room_gib * GiB, 32768, 4096)
    assert estimate(SEVEN_B, WEIGHTS, context, 4).total <= room_gib * GiB
    assert estimate(SEVEN_B, WEIGHTS, context * 2, 4).total > room_gib * GiB
    assert MIN_AUTO_CONTEXT <= context < 32768


def test_never_below_the_floor_even_when_nothing_fits() -> None:
    assert fitting_context(SEVEN_B, WEIGHTS, 4, GiB, 32768, 4096) == MIN_AUTO_CONTEXT


def test_a_header_without_a_context_gets_the_fallback_and_a_short_trained_context_is_kept() -> None:
    unknown = GGUFSummary(architecture="llama")
    assert fitting_context(unknown, 2**20, 4, 64 * GiB, 32768, 4096) == 4096
    short = GGUFSummary(architecture="llama", context_length=1024, block_count=2)
    assert fitting_context(short, 2**20, 4, 0, 32768, 4096) == 1024


def test_a_workers_prompt_cache_in_ram_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_WORKER_CACHE_RAM_MIB", raising=False)
    plain = estimate(SEVEN_B, WEIGHTS, 4096, 4)
    monkeypatch.setenv("RBEE_WORKER_CACHE_RAM_MIB", "2048")
    assert estimate(SEVEN_B, WEIGHTS, 4096, 4).total - plain.total == 2 * GiB
