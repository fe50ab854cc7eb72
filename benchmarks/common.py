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
