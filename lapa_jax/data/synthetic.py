"""Synthetic frame pairs with a known latent action, for tests of the quantizer.

One square moves by `step` pixels in one of 8 compass directions over a plain
background; a quantizer whose latent carries the action must tell the 8 apart.
"""

from __future__ import annotations

import numpy as np

DIRECTIONS = np.array(
    [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)], np.int32
)  # (dy, dx), counter-clockwise from "right"


def moving_square_pairs(
    n: int, size: int = 16, square: int = 4, step: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    """frames [n, 2, size, size, 3] float32 in [0, 1], direction [n] int32 (0..7),
    displacement [n, 2] float32 (dy, dx) in pixels."""
    if size < square + 2 * step + 1:
        raise ValueError(f"size {size} too small for a {square}px square moving {step}px")
    rng = np.random.default_rng(seed)
    direction = rng.integers(0, 8, n).astype(np.int32)
    disp = DIRECTIONS[direction] * step
    lo, hi = step, size - square - step
    pos0 = rng.integers(lo, hi + 1, (n, 2))
    pos1 = pos0 + disp
    background = np.broadcast_to(
        rng.uniform(0.0, 0.3, (n, 1, 1, 1, 3)), (n, 1, size, size, 3)
    ).astype(np.float32)
    frames = np.repeat(background, 2, axis=1)
    colour = rng.uniform(0.6, 1.0, (n, 3)).astype(np.float32)
    for i in range(n):
        for t, (y, x) in enumerate((pos0[i], pos1[i])):
            frames[i, t, y : y + square, x : x + square] = colour[i]
    return {"frames": frames, "direction": direction, "displacement": disp.astype(np.float32)}
