"""OpenAI answers as Ollama's lines, and /infill answers as OpenAI completions: event by event, whatever
the chunking of the worker's stream."""

from __future__ import annotations

import json

import pytest

from rbee.contracts.ollama import OllamaChatRequest, OllamaOptions
from rbee.queen.infill_routes import SuffixCompletion
from rbee.queen.ollama_translate import Chained, OllamaAnswer, chat_body, sampling

STREAM = (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}\n\n'
          b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\n\n'
          b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
          b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2},'
          b'"timings":{"prompt_ms":1.5,"predicted_ms":2.0}}\n\n'
          b"data: [DONE]\n\n")


@pytest.mark.parametrize("size", [1, 7, 64, len(STREAM)])
def test_a_chat_stream_becomes_ndjson_whatever_its_chunks(size: int) -> None:
    answer = OllamaAnswer("tiny", generate=False)
    out = b"".join(answer.chunk(STREAM[i:i + size]) for i in range(0, len(STREAM), size)) + answer.end()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["message"]["content"] for line in lines] == ["Hel", "lo", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    last = lines[-1]
    assert last["done_reason"] == "length" and last["eval_count"] == 2 and last["prompt_eval_count"] == 12
    assert last["prompt_eval_duration"] == 1_500_000 and last["eval_duration"] == 2_000_000


def test_a_whole_answer_is_one_object() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    reply = json.loads(OllamaAnswer("tiny", generate=True).whole(json.dumps(body).encode()))
    assert reply["response"] == "Hi" and reply["done"] is True and reply["done_reason"] == "stop"
    assert reply["eval_count"] == 1 and reply["prompt_eval_count"] == 3


def test_tools_reach_the_worker_as_sent() -> None:
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}, "strict": True}}
    asked = OllamaChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                              "tools": [tool]})
    assert json.loads(json.dumps(chat_body(asked)))["tools"] == [tool]


def test_options_map_onto_the_engine() -> None:
    options = OllamaOptions(num_predict=5, temperature=0.0, top_k=3, seed=1, stop=["x"], num_ctx=8192)
    assert sampling(options) == {"max_tokens": 5, "temperature": 0.0, "top_k": 3, "seed": 1, "stop": ["x"]}
    assert "max_tokens" not in sampling(OllamaOptions(num_predict=-1))  # Ollama's "until the context is full"


def test_an_infill_stream_becomes_completion_chunks_with_usage() -> None:
    native = (b'data: {"content":"a","stop":false}\n\n'
              b'data: {"content":"b","stop":true,"stop_type":"limit","tokens_predicted":2,"tokens_evaluated":9}\n\n')
    translated = SuffixCompletion("tiny-fim", include_usage=True)
    out = translated.chunk(native[:20]) + translated.chunk(native[20:]) + translated.end()
    events = [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert [c["text"] for e in events for c in e["choices"]] == ["a", "b"]
    assert [c["finish_reason"] for e in events for c in e["choices"]] == [None, "length"]
    assert events[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    assert out.endswith(b"data: [DONE]\n\n")


INFILL_STREAM = (b'data: {"content":"x = ","stop":false}\n\n'
                 b'data: {"content":"a + b","stop":false}\n\n'
                 b'data: {"content":"","stop":true,"stop_type":"limit","tokens_evaluated":9,"tokens_predicted":2,'
                 b'"timings":{"prompt_ms":1.0,"predicted_ms":3.0}}\n\n')


@pytest.mark.parametrize("size", [1, 9, len(INFILL_STREAM)])
def test_an_infill_stream_becomes_ollamas_generate_lines(size: int) -> None:
    answer = Chained(SuffixCompletion("fim", include_usage=True), OllamaAnswer("fim", generate=True))
    assert answer.media_type == "application/x-ndjson"
    out = b"".join(answer.chunk(INFILL_STREAM[i:i + size]) for i in range(0, len(INFILL_STREAM), size)) + answer.end()
    lines = [json.loads(line) for line in out.splitlines()]
    assert "".join(line["response"] for line in lines) == "x = a + b" and [line["done"] for line in lines][-1]
    last = lines[-1]
    assert last["done_reason"] == "length" and last["eval_count"] == 2 and last["prompt_eval_count"] == 9
    assert last["eval_duration"] == 3_000_000


def test_a_whole_infill_answer_is_one_generate_object() -> None:
    native = {"content": "a + b", "stop": True, "stop_type": "eos", "tokens_evaluated": 9, "tokens_predicted": 3}
    answer = Chained(SuffixCompletion("fim", include_usage=False), OllamaAnswer("fim", generate=True))
    reply = json.loads(answer.whole(json.dumps(native).encode()))
    assert reply["response"] == "a + b" and reply["done"] and reply["done_reason"] == "stop"
    assert reply["eval_count"] == 3 and reply["prompt_eval_count"] == 9
