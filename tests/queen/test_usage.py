"""Token counts read from what workers send, in each protocol's own usage fields."""

from __future__ import annotations

import pytest

from rbee.queen.usage import tokens_in

ANTHROPIC_HEAD = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
                  b'{"cache_read_input_tokens":11,"input_tokens":2,"output_tokens":0}}}\n\n'
                  b'event: content_block_start\ndata: {"type":"content_block_start","index":0}\n\n')
ANTHROPIC_TAIL = (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
                  b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7}}\n\n'
                  b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


@pytest.mark.parametrize(("body", "counts"), [
    (b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}', (3, 4)),
    (b'{"type": "message", "usage": {"cache_read_input_tokens": 10, "input_tokens": 2, "output_tokens": 5}}',
     (12, 5)),
    (b'{"object": "response", "usage": {"input_tokens": 12, "output_tokens": 8, "total_tokens": 20}}', (12, 8)),
    (b'{"input_tokens": 12}', (0, 0)),  # count_tokens: nothing was generated, nothing is spent
    (b'{"usage": {"input_tokens": -5, "output_tokens": true}}', (0, 0)),
    (b"not json", (0, 0)),
])
def test_whole_answers(body: bytes, counts: tuple[int, int]) -> None:
    assert tokens_in(body, stream=False) == counts


def test_an_anthropic_stream_names_its_prompt_at_the_start_and_its_answer_at_the_end() -> None:
    assert tokens_in(ANTHROPIC_TAIL, stream=True, head=ANTHROPIC_HEAD) == (13, 7)
    assert tokens_in(ANTHROPIC_TAIL, stream=True) == (0, 7)


def test_a_responses_stream_ends_with_its_usage() -> None:
    tail = (b'event: response.output_text.done\ndata: {"type":"response.output_text.done","text":"hi"}\n\n'
            b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":'
            b'{"input_tokens":12,"output_tokens":4}}}\n\n')
    assert tokens_in(tail, stream=True) == (12, 4)


def test_an_openai_stream_still_counts_from_usage_or_timings() -> None:
    tail = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6}}\n\ndata: [DONE]\n\n'
    assert tokens_in(tail, stream=True) == (5, 6)
    timed = b'data: {"choices":[],"timings":{"prompt_n":1,"cache_n":4,"predicted_n":9}}\n\n'
    assert tokens_in(timed, stream=True) == (5, 9)
