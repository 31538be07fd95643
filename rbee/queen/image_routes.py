"""Text to image: `POST /v1/images/generations` (OpenAI's shape), routed by `model` to an sd-server worker.

The queen checks the request (contracts.openai.ImageRequest), then writes the body sd-server reads: OpenAI's
`prompt`, `n` and `size`, and the rest (`seed`, `steps`, `sampler`, `cfg_scale`, `negative_prompt`) in the
`<sd_cpp_extra_args>` JSON that sd-server takes from the end of the prompt. A client's prompt that carries that
tag itself is refused: it would set what the queen bounds (the size, `n`) or parts of sd-server rbee does not
offer. A request without a `seed` gets a random one, as OpenAI's images differ call to call. The answer
(`{"created", "data": [{"b64_json"}]}`, PNGs) goes back as sd-server wrote it.
"""

from __future__ import annotations

import json
import secrets

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.common import settings
from rbee.contracts.openai import ImageRequest
from rbee.contracts.workers import WorkerMode
from rbee.queen.errors import InvalidRequest
from rbee.queen.inference import deadline_of, serve
from rbee.queen.requests import read_json

GENERATIONS_PATH = "/v1/images/generations"  # sd-server's route, the same as OpenAI's
EXTRA_TAG = "sd_cpp_extra_args"
SIZE_STEP = 64  # SD's UNet halves the latent (1/8 of the image) three times


def check_size(size: str) -> tuple[int, int]:
    """(width, height) of a "WxH" size rbee makes; InvalidRequest names what is wrong with any other."""
    width, height = (int(part) for part in size.split("x"))
    most = settings.image_max_pixels()
    if width < SIZE_STEP or height < SIZE_STEP or width % SIZE_STEP or height % SIZE_STEP:
        raise InvalidRequest(f"The size {size} is not one rbee makes: width and height are multiples of "
                             f"{SIZE_STEP}, at least {SIZE_STEP} (512x512, 768x512...).", param="size",
                             code="invalid_size")
    if width * height > most:
        raise InvalidRequest(f"The size {size} has {width * height} pixels, more than {most} "
                             "(RBEE_IMAGE_MAX_PIXELS, which sizes an image worker's memory).", param="size",
                             code="invalid_size")
    return width, height


def engine_body(parsed: ImageRequest) -> bytes:
    """The request sd-server reads for `parsed` (checked): its extras inside the prompt's tag."""
    if f"<{EXTRA_TAG}>" in parsed.prompt or f"<{EXTRA_TAG}>" in (parsed.negative_prompt or ""):
        raise InvalidRequest(f"The prompt carries <{EXTRA_TAG}>, which rbee sets itself; use the request's "
                             "fields (seed, steps, sampler, cfg_scale, negative_prompt).", param="prompt",
                             code="invalid_prompt")
    sample: dict[str, object] = {}
    if parsed.steps is not None:
        sample["sample_steps"] = parsed.steps
    if parsed.sampler is not None:
        sample["sample_method"] = parsed.sampler
    if parsed.cfg_scale is not None:
        sample["guidance"] = {"txt_cfg": parsed.cfg_scale}
    extras: dict[str, object] = {"seed": parsed.seed if parsed.seed is not None else secrets.randbelow(2**31)}
    if sample:
        extras["sample_params"] = sample
    if parsed.negative_prompt:
        extras["negative_prompt"] = parsed.negative_prompt
    prompt = f"{parsed.prompt}<{EXTRA_TAG}>{json.dumps(extras)}</{EXTRA_TAG}>"
    return json.dumps({"prompt": prompt, "n": parsed.n, "size": parsed.size, "output_format": "png"}).encode()


async def generations(request: Request) -> Response:
    deadline = deadline_of(request)
    _, parsed = await read_json(request, ImageRequest)
    if parsed.response_format == "url":
        raise InvalidRequest("rbee returns images in the answer itself: ask for response_format \"b64_json\" "
                             "(the default); it keeps no files to link to.", param="response_format",
                             code="unsupported_response_format")
    check_size(parsed.size)
    return await serve(request, engine_body(parsed), parsed, GENERATIONS_PATH, WorkerMode.IMAGE, deadline,
                       images=parsed.n)


routes = [Route("/v1/images/generations", generations, methods=["POST"])]
