"""The two robot action heads of stage 3, as what differs between them: how the model
is shaped, what each training step's target is, the loss, and how a prediction becomes
actions [N, K, A] (K = actions per prediction).

- binned (the paper's): one token per action dimension, `ActionBins` classes each,
  predicted one dimension after another; K = 1.
- chunked: the next K actions, normalized with the train split's mean and standard
  deviation, read out in one pass from K learned queries and trained with an L1 loss
  (ACT-style); steps past the episode's end repeat its last action and are masked out.

Each head's fitted state (bins, statistics) is JSON kept in the run's config.json, so
a resumed run and a served policy decode exactly as the run trained.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lapa_jax.action_bins import ActionBins

HEADS = ("binned", "chunked")
MIN_STD = 1e-3  # a constant dimension is not scaled up into noise


class BinnedHead:
    name = "binned"
    chunk_size = 1

    def __init__(self, bins: ActionBins):
        self.bins = bins
        self.action_dim = bins.dim

    def model_overrides(self) -> dict[str, int]:
        return {"num_latent_tokens": self.bins.dim, "latent_codes": self.bins.max_bins}

    def targets(self, actions_TA: np.ndarray, t: int) -> dict[str, np.ndarray]:
        return {"latent": self.bins.encode(actions_TA[t : t + 1])[0]}

    def to_actions(self, tokens_NA: np.ndarray) -> np.ndarray:
        limit = np.asarray([self.bins.bins(d) - 1 for d in range(self.bins.dim)])
        return self.bins.decode(np.minimum(np.asarray(tokens_NA), limit))[:, None]


class ActionStats:
    """Per-dimension mean and std of the train split's actions, for normalizing."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.maximum(np.asarray(std, np.float32), MIN_STD)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise ValueError(f"action statistics of shapes {self.mean.shape}, {self.std.shape}")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std))):
            raise ValueError("action statistics must be finite")

    @classmethod
    def fit(cls, actions_NA: np.ndarray) -> ActionStats:
        a = np.asarray(actions_NA, np.float64)
        if a.ndim != 2 or len(a) == 0 or not np.all(np.isfinite(a)):
            raise ValueError(f"fit needs finite actions [N, A] with N >= 1, got {a.shape}")
        return cls(a.mean(0), a.std(0))

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        return ((np.asarray(actions, np.float32) - self.mean) / self.std).astype(np.float32)

    def denormalize(self, normalized: np.ndarray) -> np.ndarray:
        return (np.asarray(normalized, np.float32) * self.std + self.mean).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ActionStats:
        try:
            return cls(np.asarray(d["mean"]), np.asarray(d["std"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not an action-statistics record: {e}") from e


class ChunkedHead:
    name = "chunked"

    def __init__(self, mean: np.ndarray, std: np.ndarray, chunk_size: int):
        self.stats = ActionStats(mean, std)
        self.mean, self.std = self.stats.mean, self.stats.std
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.action_dim = len(self.mean)

    @classmethod
    def fit(cls, actions_NA: np.ndarray, chunk_size: int) -> ChunkedHead:
        stats = ActionStats.fit(actions_NA)
        return cls(stats.mean, stats.std, chunk_size)

    def model_overrides(self) -> dict[str, int]:
        return {"num_latent_tokens": self.chunk_size, "action_dim": self.action_dim}

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        return self.stats.normalize(actions)

    def to_actions(self, normalized_NKA: np.ndarray) -> np.ndarray:
        return self.stats.denormalize(normalized_NKA)

    def targets(self, actions_TA: np.ndarray, t: int) -> dict[str, np.ndarray]:
        """Actions t..t+K-1 (normalized); past the end, the last action, masked out."""
        n = len(actions_TA)
        idx = np.arange(t, t + self.chunk_size)
        return {
            "latent": np.zeros(self.chunk_size, np.int32),  # the model's unused code input
            "actions": self.normalize(actions_TA[np.minimum(idx, n - 1)]),
            "action_mask": (idx < n).astype(np.float32),
        }

    def loss(self, pred_BKA: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
        err_BKA = jnp.abs(pred_BKA - batch["actions"])
        mask_BK1 = batch["action_mask"][..., None]
        denom = jnp.maximum(mask_BK1.sum() * pred_BKA.shape[-1], 1.0)
        loss = jnp.sum(err_BKA * mask_BK1) / denom
        metrics = {"l1_loss": loss, "l1_first_step": jnp.mean(err_BKA[:, 0])}
        per_dim = jnp.sum(err_BKA * mask_BK1, (0, 1)) / jnp.maximum(mask_BK1.sum(), 1.0)
        for d in range(pred_BKA.shape[-1]):
            metrics[f"l1_dim_{d}"] = per_dim[d]
        return loss, metrics

    def to_json(self) -> str:
        return json.dumps({**self.stats.to_json(), "chunk_size": self.chunk_size})

    @classmethod
    def from_json(cls, text: str) -> ChunkedHead:
        try:
            d = json.loads(text)
            stats = ActionStats.from_json(d)
            return cls(stats.mean, stats.std, int(d["chunk_size"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not an action-statistics record: {e}") from e


def saved_head(config: Any) -> BinnedHead | ChunkedHead | None:
    """The head whose fitted state the config already holds (a resumed or served run)."""
    head = config.get("head", "binned")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head == "binned" and config.get("action_bins"):
        return BinnedHead(ActionBins.from_json(json.loads(config.action_bins)))
    if head == "chunked" and config.get("action_stats"):
        head_ = ChunkedHead.from_json(config.action_stats)
        if head_.chunk_size != int(config.get("chunk_size", head_.chunk_size)):
            raise ValueError(
                f"config chunk_size {config.chunk_size} differs from the saved statistics' "
                f"{head_.chunk_size}"
            )
        return head_
    return None


def fit_head(config: Any, actions_NA: np.ndarray, gripper_index: int | None) -> Any:
    """A new head fitted on the train split's actions; its state is stored in config."""
    head = config.get("head", "binned")
    if head == "binned":
        # The paper's robots open or close the gripper; Meta-World's experts grade the
        # effort, so a binary gripper there loses a third of that dimension's variance.
        binary = bool(config.get("binary_gripper", True))
        bins = ActionBins.fit(
            actions_NA,
            num_bins=int(config.get("num_bins", 256)),
            gripper_index=gripper_index if binary else None,
        )
        config.action_bins = json.dumps(bins.to_json())
        return BinnedHead(bins)
    if head == "chunked":
        fitted = ChunkedHead.fit(actions_NA, int(config.get("chunk_size", 8)))
        config.action_stats = fitted.to_json()
        return fitted
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")
