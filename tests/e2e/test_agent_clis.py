"""The agent CLIs themselves (pinned in tests/agents, installed by `make agents`) complete a one-shot prompt
against a real queen, on a model whose context rbee sized itself: RBEE_WORKER_CONTEXT is unset, so the
worker's context is the model's trained one (32768 here), which holds the agents' 11-14k-token first
request (system prompt and tool definitions).

The model is the generated tiny one with EOS allowed, trained (per its header) for 32k tokens: a model
that never stops would generate until its context is full, since Claude Code asks for `max_tokens` 32000
and Codex sets no limit at all (minutes on a CPU; what made `claude -p` look hung before).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, Queen, wait_for
from tests.e2e.test_security import _admin, _create_key
from tests.fixtures.tiny_gguf import write_tiny_model

AGENT_BIN = REPO / "tests" / "agents" / "node_modules" / ".bin"
TRAINED_CONTEXT = 32768
SERVED = re.compile(r"request \S+ (?P<route>/v1/\S+) model=tiny-agent .*status=(?P<status>\d+) "
                    r".*tokens=(?P<prompt>\d+)\+(?P<completion>\d+) by (?P<who>\S+)")


@dataclass
class Served:
    """One request as the queen's request log (RBEE_LOG_LEVEL=DEBUG) records it."""

    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    who: str


@dataclass
class AgentQueen:
    queen: Queen
    key: str
    reference: list[str]  # the words the worker generates for any prompt, EOS ignored


def _agent_cli(name: str) -> Path:
    path = AGENT_BIN / name
    if not path.exists():
        pytest.fail(f"no {path}: run `make agents` (make test does), which installs tests/agents' lock file")
    return path


def _contexts(queen: Queen) -> list[int]:
    """Each worker's context per slot (the admin token: once a key exists, the queen asks for it)."""
    workers = httpx.get(f"{queen.url}/v1/workers", headers=_admin(queen), timeout=10).json()
    return [w["context_size"] for w in workers]


def _served(queen: Queen, route: str) -> list[Served]:
    found = (SERVED.search(line) for line in queen.log.read_text().splitlines())
    return [Served(m["route"], int(m["status"]), int(m["prompt"]), int(m["completion"]), m["who"])
            for m in found if m and m["route"].split("?")[0] == route]


@pytest.fixture(scope="module")
def agent_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-agent.gguf", eos_bias=8.0,
                            name="tiny-agent", context_length=TRAINED_CONTEXT)


@pytest.fixture
def agent_queen(make_queen: Callable[..., Queen], agent_model: Path, tmp_path: Path) -> AgentQueen:
    """A queen with no context set; the owner loads the model by path once (it joins the catalog as
    `tiny-agent`), then a key for the agents is made."""
    queen = make_queen(RBEE_LOG_LEVEL="DEBUG")
    del queen.env["RBEE_WORKER_CONTEXT"]
    queen.start()
    body = {"model": str(agent_model), "max_tokens": 16, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "hello"}]}
    reply = httpx.post(f"{queen.url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    reference = reply.json()["choices"][0]["message"]["content"].split()
    assert len(reference) == 16 and reference[0] == "Hello"
    assert _contexts(queen) == [TRAINED_CONTEXT]
    return AgentQueen(queen, _create_key(queen, "--name", "agent"), reference)


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run an agent CLI with only `env` (and PATH, for node); its stdout, once it exited 0."""
    result = subprocess.run(argv, env={"PATH": os.environ["PATH"], **env}, cwd=cwd, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"{argv[0]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _assert_answered(agents: AgentQueen, route: str, printed: str) -> None:
    """The CLI printed what the worker generated for the one request it sent on `route`, with its key."""
    queen = agents.queen
    assert wait_for(lambda: bool(_served(queen, route)), 10), queen.log.read_text()[-3000:]
    [served] = _served(queen, route)
    assert served.status == 200 and served.who == "key:agent"
    assert served.prompt_tokens > 4096  # the agent's first request; 4096 was the old fixed context
    words = printed.split()
    assert words and words == agents.reference[:len(words)], printed
    assert served.completion_tokens == len(words) + 1  # the worker counts the EOS it stopped on
    assert _contexts(queen) == [TRAINED_CONTEXT]  # the same worker, not resized


def test_claude_code_answers_a_one_shot_prompt(agent_queen: AgentQueen, tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "ANTHROPIC_BASE_URL": agent_queen.queen.url, "ANTHROPIC_API_KEY": agent_queen.key,
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    printed = _run([str(_agent_cli("claude")), "-p", "Say hello", "--model", "tiny-agent"], env, tmp_path)
    _assert_answered(agent_queen, "/v1/messages", printed)


def test_codex_answers_a_one_shot_prompt(agent_queen: AgentQueen, tmp_path: Path) -> None:
    (tmp_path / "codex").mkdir()
    env = {"HOME": str(tmp_path), "CODEX_HOME": str(tmp_path / "codex"), "RBEE_KEY": agent_queen.key}
    provider = (f'model_providers.rbee={{name="rbee",base_url="{agent_queen.queen.url}/v1",env_key="RBEE_KEY",'
                'wire_api="responses"}')
    printed = _run([str(_agent_cli("codex")), "exec", "--skip-git-repo-check", "-c", "model_provider=rbee",
                    "-c", provider, "-m", "tiny-agent", "Say hello"], env, tmp_path)
    _assert_answered(agent_queen, "/v1/responses", printed)
