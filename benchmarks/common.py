"""Shared by the benchmark scripts: every result file says when and where it was measured."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any


def write_result(path: str, benchmark: str, payload: dict[str, Any]) -> None:
    import jax

    result = {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "devices": str(jax.devices()),
        },
        **payload,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


def time_train_steps(trainer: Any, state: Any, host_batch: Any, steps: int) -> dict[str, Any]:
    """One warm-up step (compilation), then `steps` timed steps on the same batch."""
    import jax

    t0 = time.perf_counter()
    state, metrics = trainer.train_step(state, host_batch)
    jax.block_until_ready(metrics["loss"])
    warm = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = trainer.train_step(state, host_batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    return {"state": state, "metrics": metrics, "warmup_s": warm, "times": times}
