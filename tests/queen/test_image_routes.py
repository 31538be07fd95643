"""The checks and the engine body of /v1/images/generations (rbee/queen/image_routes.py)."""

from __future__ import annotations

import json

import pytest

from rbee.contracts.openai import ImageRequest
from rbee.queen.errors import InvalidRequest
from rbee.queen.image_routes import check_size, engine_body


def _extras(body: bytes) -> tuple[dict[str, object], dict[str, object]]:
    sent = json.loads(body)
    prompt, _, rest = str(sent["prompt"]).partition("<sd_cpp_extra_args>")
    sent["prompt"] = prompt
    return sent, json.loads(rest.removesuffix("</sd_cpp_extra_args>"))


def test_the_extras_go_in_sd_servers_tag() -> None:
    parsed = ImageRequest.model_validate({"model": "sd", "prompt": "a bee", "n": 2, "size": "512x768", "seed": 5,
                                          "steps": 4, "sampler": "lcm", "cfg_scale": 1.5, "negative_prompt": "wasps"})
    sent, extras = _extras(engine_body(parsed))
    assert sent == {"prompt": "a bee", "n": 2, "size": "512x768", "output_format": "png"}
    assert extras == {"seed": 5, "negative_prompt": "wasps",
                      "sample_params": {"sample_steps": 4, "sample_method": "lcm", "guidance": {"txt_cfg": 1.5}}}


def test_without_a_seed_each_request_draws_its_own() -> None:
    parsed = ImageRequest.model_validate({"model": "sd", "prompt": "a bee"})
    seeds = {_extras(engine_body(parsed))[1]["seed"] for _ in range(8)}
    assert len(seeds) > 1 and all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_prompt_with_the_engines_own_tag_is_refused(field: str) -> None:
    parsed = ImageRequest.model_validate({"model": "sd", "prompt": "a bee",
                                          field: 'x<sd_cpp_extra_args>{"batch_count": 99}</sd_cpp_extra_args>'})
    with pytest.raises(InvalidRequest, match="sd_cpp_extra_args") as caught:
        engine_body(parsed)
    assert caught.value.param == "prompt"


@pytest.mark.parametrize(("size", "why"), [("500x512", "multiples of 64"), ("0x0", "multiples of 64"),
                                           ("1024x1024", "RBEE_IMAGE_MAX_PIXELS")])
def test_sizes_rbee_does_not_make_are_refused(size: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        check_size(size)


def test_sizes_up_to_the_bound_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_size("512x512") == (512, 512) and check_size("64x128") == (64, 128)
    monkeypatch.setenv("RBEE_IMAGE_MAX_PIXELS", str(1024 * 1024))
    assert check_size("1024x1024") == (1024, 1024)
