"""Dataset statistics, computed once per split and saved as JSON next to the data.

Stage 3 normalizes and bins actions with these; the quantizer report and the data
summary quote the counts. The file records the spec and the episode index fingerprint
it was computed from, so stale statistics are detected rather than silently used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lapa_jax.data.sources import EpisodeSource

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def compute_statistics(source: EpisodeSource) -> dict[str, Any]:
    actions = None
    if source.spec.has_actions:
        actions = np.concatenate([source.actions(i) for i in range(len(source))])
    return statistics_from_arrays(
        dataset=source.dataset_name,
        data_dir=source.data_dir,
        split=source.split,
        spec=source.spec.to_json(),
        lengths=source.lengths,
        actions_NA=actions,
        image_shape=source.image_shape,
        num_skipped=len(source.skipped),
    )


def statistics_from_arrays(
    *,
    dataset: str,
    data_dir: str,
    split: str,
    spec: dict[str, Any],
    lengths: np.ndarray,
    actions_NA: np.ndarray | None,
    image_shape: Sequence[int | None],
    num_skipped: int = 0,
) -> dict[str, Any]:
    """The statistics record from episode lengths and all flat actions of a split."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) == 0:
        raise ValueError(f"{data_dir} split {split!r}: no episodes to compute statistics of")
    stats: dict[str, Any] = {
        "dataset": dataset,
        "data_dir": data_dir,
        "split": split,
        "spec": spec,
        "num_episodes": len(lengths),
        "num_steps": int(lengths.sum()),
        "num_skipped_episodes": int(num_skipped),
        "episode_length": {
            "min": int(lengths.min()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "image_shape": [None if d is None else int(d) for d in image_shape],
    }
    if actions_NA is not None:
        a = np.asarray(actions_NA, np.float64)
        stats["action"] = {
            "dim": int(a.shape[1]),
            "mean": a.mean(0).tolist(),
            "std": a.std(0).tolist(),
            "min": a.min(0).tolist(),
            "max": a.max(0).tolist(),
            "quantiles": {str(q): np.quantile(a, q, axis=0).tolist() for q in QUANTILES},
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
