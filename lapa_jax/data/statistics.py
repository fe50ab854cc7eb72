"""Dataset statistics, computed once per split and saved as JSON next to the data.

Stage 3 normalizes and bins actions with these; the quantizer report and the data
summary quote the counts. The file records the spec and the episode index fingerprint
it was computed from, so stale statistics are detected rather than silently used.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from lapa_jax.data.sources import EpisodeSource

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def compute_statistics(source: EpisodeSource) -> dict[str, Any]:
    lengths = source.lengths
    stats: dict[str, Any] = {
        "dataset": source.dataset_name,
        "data_dir": source.data_dir,
        "split": source.split,
        "spec": source.spec.to_json(),
        "num_episodes": len(source),
        "num_steps": int(lengths.sum()),
        "num_skipped_episodes": len(source.skipped),
        "episode_length": {
            "min": int(lengths.min()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "image_shape": [None if d is None else int(d) for d in source.image_shape],
    }
    if source.spec.has_actions:
        actions_NA = np.concatenate([source.actions(i) for i in range(len(source))]).astype(
            np.float64
        )
        stats["action"] = {
            "dim": int(actions_NA.shape[1]),
            "mean": actions_NA.mean(0).tolist(),
            "std": actions_NA.std(0).tolist(),
            "min": actions_NA.min(0).tolist(),
            "max": actions_NA.max(0).tolist(),
            "quantiles": {str(q): np.quantile(actions_NA, q, axis=0).tolist() for q in QUANTILES},
        }
    return stats


def statistics_path(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, f"dataset_statistics_{split}.json")


def save_statistics(data_dir: str, stats: dict[str, Any], split: str = "train") -> str:
    path = statistics_path(data_dir, split)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(stats, f, indent=2)
    os.replace(tmp, path)
    return path


def load_statistics(data_dir: str, split: str = "train") -> dict[str, Any]:
    path = statistics_path(data_dir, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No statistics at {path}; compute them with "
            f"python -m data_pipelines.compute_statistics --data_dir {data_dir} --spec NAME"
        )
    with open(path) as f:
        return json.load(f)
