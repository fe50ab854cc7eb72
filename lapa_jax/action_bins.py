"""Discretizing continuous robot actions into tokens, as the paper's action head does.

Each continuous dimension gets `num_bins` bins whose edges are the finetuning data's
quantiles, so every bin holds about the same number of training actions; a token
decodes to the centre of its bin's interval. The gripper dimension is binary: open or
closed, decoded to the typical value of its class in the data. Bins are fitted once,
on the finetuning data, and saved as JSON beside the checkpoint, so a policy decodes
exactly as it was trained.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np


@dataclasses.dataclass
class ActionBins:
    edges: list[np.ndarray]  # per dimension: increasing bin edges, len = bins + 1 (None: gripper)
    gripper_index: int | None = None
    gripper_threshold: float = 0.0
    gripper_values: tuple[float, float] = (-1.0, 1.0)  # decoded value of token 0 and token 1

    @property
    def dim(self) -> int:
        return len(self.edges)

    def bins(self, d: int) -> int:
        return 2 if d == self.gripper_index else len(self.edges[d]) - 1

    @property
    def max_bins(self) -> int:
        """The token vocabulary one head needs: the largest bin count of any dimension."""
        return max(self.bins(d) for d in range(self.dim))

    @classmethod
    def fit(
        cls,
        actions_NA: np.ndarray,
        num_bins: int = 256,
        gripper_index: int | None = None,
        gripper_threshold: float = 0.0,
    ) -> ActionBins:
        a = np.asarray(actions_NA, np.float64)
        if a.ndim != 2 or len(a) == 0:
            raise ValueError(f"fit needs actions [N, A] with N >= 1, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            bad = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(f"non-finite action value at row {bad[0]}, dimension {bad[1]}")
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        if gripper_index is not None and not 0 <= gripper_index < a.shape[1]:
            raise ValueError(f"gripper_index {gripper_index} outside 0..{a.shape[1] - 1}")
        edges: list[np.ndarray] = []
        gripper_values = (-1.0, 1.0)
        for d in range(a.shape[1]):
            col = a[:, d]
            if d == gripper_index:
                closed = col > gripper_threshold
                lo = float(np.median(col[~closed])) if (~closed).any() else float(col.min())
                hi = float(np.median(col[closed])) if closed.any() else float(col.max())
                gripper_values = (lo, hi)
                edges.append(np.asarray([gripper_threshold]))
                continue
            q = np.quantile(col, np.linspace(0.0, 1.0, num_bins + 1))
            # Repeated values (a constant dimension, a value held often) give repeated
            # quantiles: keep one edge each, so no bin is empty by construction.
            q = np.unique(q)
            if len(q) == 1:
                q = np.asarray([q[0] - 1e-6, q[0] + 1e-6])
            edges.append(q)
        return cls(edges, gripper_index, gripper_threshold, gripper_values)

    def encode(self, actions_NA: np.ndarray) -> np.ndarray:
        """Actions [N, A] -> tokens int32 [N, A]; values outside the fitted range go to
        the first or last bin."""
        a = np.asarray(actions_NA, np.float64)
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"expected actions [N, {self.dim}], got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("cannot encode non-finite action values")
        out = np.empty(a.shape, np.int32)
        for d in range(self.dim):
            if d == self.gripper_index:
                out[:, d] = a[:, d] > self.gripper_threshold
                continue
            inner = self.edges[d][1:-1]
            out[:, d] = np.searchsorted(inner, a[:, d], side="right")
        return out

    def decode(self, tokens_NA: np.ndarray) -> np.ndarray:
        """Tokens [N, A] -> actions float32 [N, A] at the bin centres."""
        t = np.asarray(tokens_NA)
        if t.ndim != 2 or t.shape[1] != self.dim:
            raise ValueError(f"expected tokens [N, {self.dim}], got shape {t.shape}")
        out = np.empty(t.shape, np.float32)
        for d in range(self.dim):
            n = self.bins(d)
            if (t[:, d] < 0).any() or (t[:, d] >= n).any():
                raise ValueError(
                    f"dimension {d} has {n} bins; tokens {np.unique(t[:, d]).tolist()}"
                )
            if d == self.gripper_index:
                out[:, d] = np.where(t[:, d] > 0, self.gripper_values[1], self.gripper_values[0])
                continue
            e = self.edges[d]
            out[:, d] = (e[t[:, d]] + e[t[:, d] + 1]) / 2
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "edges": [e.tolist() for e in self.edges],
            "gripper_index": self.gripper_index,
            "gripper_threshold": self.gripper_threshold,
            "gripper_values": list(self.gripper_values),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ActionBins:
        try:
            edges = [np.asarray(e, np.float64) for e in d["edges"]]
            bins = cls(
                edges,
                d.get("gripper_index"),
                float(d.get("gripper_threshold", 0.0)),
                tuple(float(v) for v in d.get("gripper_values", (-1.0, 1.0))),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not an action-bins record: {e}") from e
        for i, e in enumerate(edges):
            if i != bins.gripper_index and (len(e) < 2 or np.any(np.diff(e) <= 0)):
                raise ValueError(f"action bins: dimension {i} has no increasing edges")
        return bins

    def save(self, path: str) -> str:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> ActionBins:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no action bins at {path}")
        with open(path) as f:
            try:
                return cls.from_json(json.load(f))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from e
