"""Metrics a researcher reads at a glance: JSONL, TensorBoard event files, a progress
bar, and PNG image grids. Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np


def image_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Rows of same-sized images ([H, W, 3], float in [0, 1] or uint8) -> one uint8 image."""
    imgs = [[_to_uint8(i) for i in row] for row in rows]
    h, w = imgs[0][0].shape[:2]
    ncols = max(len(r) for r in imgs)
    out = np.full((len(imgs) * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(imgs):
        for c, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y : y + h, x : x + w] = img
    return out


def _to_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return img


def save_png(path: str, img: np.ndarray, scale: int = 1) -> None:
    from PIL import Image

    im = Image.fromarray(_to_uint8(img))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    im.save(path)


class MetricWriter:
    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, progress: bool = True):
        self.enabled = jax.process_index() == 0
        self.workdir = workdir
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # TensorBoard is optional; JSONL always works
            self._tb = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {}
        for k, v in scalars.items():
            v = float(np.asarray(v))
            clean[k] = v if math.isfinite(v) else str(v)
        assert self._jsonl is not None
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float):
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None:
            shown = {
                k: clean[k]
                for k in ("loss", "psnr", "codes_used_window", "perplexity_window")
                if k in clean
            }
            self._bar.set_postfix(
                {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()}
            )

    def write_image(self, step: int, name: str, img: np.ndarray) -> str | None:
        if not self.enabled:
            return None
        path = os.path.join(self.workdir, "images", f"{name}_{step:07d}.png")
        save_png(path, img)
        if self._tb is not None:
            self._tb.add_image(name, _to_uint8(img), step, dataformats="HWC")
        return path

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
