"""The user policy file: loaded, used, reloaded when it changes, and every way it can go wrong falls
back to the built-in choice with a clear message."""

from __future__ import annotations

import os
from pathlib import Path

from rbee.queen.policy import Candidate, Policy, PolicyRequest

SHORT = PolicyRequest("m", "generate", prompt_tokens=10)
LONG = PolicyRequest("m", "generate", prompt_tokens=9000)
CPU = Candidate("desk", "cpu", "CPU (16 threads)", 64 * 2**30)
GPU = Candidate("tower", "cuda0", "NVIDIA GeForce RTX 4090", 24 * 2**30)

LONG_PROMPTS_TO_THE_4090 = '''
def rank(request, candidates):
    if request.prompt_tokens > 8000:
        return [c for c in candidates if "4090" in c.device_name]
    return sorted(candidates, key=lambda c: c.memory_total, reverse=True)
'''


def policy_file(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "policy.py"
    path.write_text(text)
    policy = Policy(path)
    policy.reload_if_changed()
    return policy


def rewrite(policy: Policy, text: str) -> None:
    assert policy.path is not None
    before = policy.path.stat().st_mtime
    policy.path.write_text(text)
    os.utime(policy.path, (before + 1, before + 1))  # a new mtime even within the clock's resolution
    policy.reload_if_changed()


def test_without_a_policy_every_candidate_is_kept_in_order() -> None:
    policy = Policy(None)
    policy.reload_if_changed()
    assert not policy.active and policy.rank(LONG, [CPU, GPU]) == [CPU, GPU]
    assert policy.status().model_dump() == {"path": None, "loaded": False, "error": None}


def test_a_policy_filters_and_ranks(tmp_path: Path) -> None:
    policy = policy_file(tmp_path, LONG_PROMPTS_TO_THE_4090)
    assert policy.active and policy.status().error is None
    assert policy.rank(LONG, [CPU, GPU]) == [GPU]
    assert policy.rank(SHORT, [GPU, CPU]) == [CPU, GPU]
    assert policy.rank(LONG, [CPU]) == []  # left out: the scheduler waits for (or loads) an allowed one


def test_a_changed_file_is_loaded_again(tmp_path: Path) -> None:
    policy = policy_file(tmp_path, LONG_PROMPTS_TO_THE_4090)
    rewrite(policy, "def rank(request, candidates):\n    return list(reversed(candidates))\n")
    assert policy.rank(LONG, [CPU, GPU]) == [GPU, CPU]


def test_a_file_that_does_not_load_is_reported_and_ignored(tmp_path: Path) -> None:
    policy = policy_file(tmp_path, "def rank(request, candidates)\n    return candidates\n")
    assert not policy.active
    assert policy.status().error is not None and "SyntaxError" in policy.status().error
    assert "policy.py, line 1" in policy.status().error
    assert policy.rank(LONG, [CPU, GPU]) == [CPU, GPU]
    rewrite(policy, "import no_such_module_here\n")
    assert "ModuleNotFoundError" in (policy.status().error or "") and not policy.active
    rewrite(policy, "RANK = 1\n")
    assert "defines no function rank(request, candidates)" in (policy.status().error or "")
    rewrite(policy, LONG_PROMPTS_TO_THE_4090)  # fixed: in use again, the error is gone
    assert policy.active and policy.status().error is None and policy.rank(LONG, [CPU, GPU]) == [GPU]


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    policy = Policy(tmp_path / "nowhere.py")
    policy.reload_if_changed()
    assert not policy.active and "cannot read the policy file" in (policy.status().error or "")


def test_a_rank_that_raises_or_returns_nonsense_falls_back(tmp_path: Path) -> None:
    policy = policy_file(tmp_path, "def rank(request, candidates):\n    return 1 / 0\n")
    assert policy.rank(LONG, [CPU, GPU]) == [CPU, GPU]
    error = policy.status().error or ""
    assert "ZeroDivisionError" in error and "policy.py, line 2" in error
    assert policy.active  # a bad call does not unload it: the next request may take another branch
    rewrite(policy, "def rank(request, candidates):\n    return 'tower'\n")
    assert policy.rank(LONG, [CPU, GPU]) == [CPU, GPU] and "not str" in (policy.status().error or "")
    rewrite(policy, "from rbee.queen.policy import Candidate\n"
                    "def rank(request, candidates):\n    return [Candidate('elsewhere', 'x', 'x', 1)]\n")
    assert policy.rank(LONG, [CPU, GPU]) == [CPU, GPU]  # only the candidates it was given count
    rewrite(policy, "def rank(request, candidates):\n    return [candidates[1], candidates[1], candidates[0]]\n")
    assert policy.rank(LONG, [CPU, GPU]) == [GPU, CPU]  # duplicates dropped
