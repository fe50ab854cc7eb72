"""Serve a finetuned policy over HTTP.

    python -m lapa_jax.serve --workdir runs/finetune --port 8000

POST /act with JSON {"image": "<base64 PNG or JPEG>", "instruction": "..."} returns
{"action": [...]} (a chunked policy adds "chunk": its K actions); GET /health returns the policy's description. A malformed request
(not JSON, missing or mistyped fields, bad base64, an undecodable or oversized image,
an empty instruction) gets a 4xx answer with a message; the server keeps running.
FastAPI on uvicorn; one policy call at a time (the jitted policy is not re-entrant on
one device), so concurrency comes from overlapping request decoding.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI resolves annotations here
from fastapi.responses import JSONResponse

MAX_IMAGE_BYTES = 10 * 2**20  # encoded
MAX_IMAGE_PIXELS = 4096 * 4096


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_request(body: Any) -> tuple[np.ndarray, str]:
    """A parsed JSON body -> (uint8 RGB image, instruction); RequestError otherwise."""
    from PIL import Image

    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    missing = [k for k in ("image", "instruction") if k not in body]
    if missing:
        raise RequestError(422, f"missing fields: {missing}")
    image_b64, instruction = body["image"], body["instruction"]
    if not isinstance(image_b64, str):
        raise RequestError(422, "'image' must be a base64 string")
    if not isinstance(instruction, str) or not instruction.strip():
        raise RequestError(422, "'instruction' must be a non-empty string")
    if len(image_b64) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestError(413, f"the image is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        raw = base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"'image' is not valid base64: {e}") from e
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format not in ("PNG", "JPEG"):
                raise RequestError(415, f"the image must be PNG or JPEG, got {im.format}")
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise RequestError(413, f"the image is {im.width}x{im.height}; too large")
            img = np.asarray(im.convert("RGB"))
    except RequestError:
        raise
    except Exception as e:  # PIL raises many types for bad data
        raise RequestError(400, f"'image' is not a readable PNG or JPEG: {e}") from e
    return img, instruction


def make_app(policy: Any) -> Any:
    app = FastAPI(title="lapa-jax policy")
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "policy": policy.describe()}

    @app.post("/act")
    async def act(request: Request) -> JSONResponse:
        try:
            try:
                body = await request.json()
            except Exception as e:  # not JSON at all
                raise RequestError(400, f"the body is not valid JSON: {e}") from e
            image, instruction = decode_request(body)
            with lock:
                chunk = policy.predict_batch([image], [instruction])[0]
        except RequestError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except ValueError as e:  # the policy's own input checks
            return JSONResponse({"error": str(e)}, status_code=422)
        out: dict[str, Any] = {"action": [float(x) for x in chunk[0]]}
        if len(chunk) > 1:  # a chunked policy: the whole chunk, for the client to execute
            out["chunk"] = [[float(x) for x in a] for a in chunk]
        return JSONResponse(out)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", required=True, help="a finetuned (stage 3) run folder")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--step", type=int, default=None)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    import uvicorn

    from lapa_jax.policy import Policy

    policy = Policy.load(a.workdir, a.step, batch_size=1)
    uvicorn.run(make_app(policy), host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
