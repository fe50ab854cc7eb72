"""What a training stage supplies to the one generic trainer.

A task owns its model, data, loss and metrics; the trainer owns the loop, the mesh,
the optimizer, checkpoints and logging, and never knows which stage it runs.
"""

from __future__ import annotations

import abc
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np


class Task(abc.ABC):
    name: str = "task"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @abc.abstractmethod
    def make_model(self) -> nn.Module: ...

    @abc.abstractmethod
    def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of the right shapes and dtypes, for initialisation."""

    @abc.abstractmethod
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
        """-> (boxed params with logical axis names, task state such as counters)."""

    @abc.abstractmethod
    def loss(
        self,
        params: Any,
        task_state: Any,
        batch: dict[str, jax.Array],
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
        """-> (scalar loss, (metrics, aux passed to `after_update`)). Differentiated in params."""

    def after_update(
        self, params: Any, task_state: Any, aux: Any, rng: jax.Array, step: jax.Array
    ) -> tuple[Any, Any, dict[str, jax.Array]]:
        """Non-gradient updates inside the jitted step (e.g. dead-code replacement)."""
        del aux, rng, step
        return params, task_state, {}

    def after_run(self, workdir: str, params: Any, step: int) -> None:
        """Called once when a run reaches its last step (after the final checkpoint)."""
        del workdir, params, step

    def loader(self, source: Any, global_batch_size: int, seed: int, shuffle: bool) -> Any:
        """The Grain loader over a random-access source, with this config's data options."""
        from lapa_jax.data import pipelines

        cfg = pipelines.LoaderConfig(
            global_batch_size=global_batch_size,
            seed=seed,
            shuffle=shuffle,
            worker_count=self.config.data.worker_count,
            read_threads=self.config.data.get("read_threads", 2),
        )
        return pipelines.make_loader(source, cfg)

    @abc.abstractmethod
    def make_data(self, split: str, global_batch_size: int, seed: int, shuffle: bool = True) -> Any:
        """-> a Grain IterDataset of host batches (checkpointable iterators)."""

    def tokens_per_example(self) -> int:
        """Sequence length of one example, for a tokens/s metric (0: not a sequence model)."""
        return 0

    def pretrained(
        self, target_shapes: dict[str, tuple[int, ...]]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ('/'-joined parameter paths) that replace freshly initialised ones when
        a run starts from scratch, and a report of their origin; none by default."""
        del target_shapes
        return {}, {}

    def evaluate(self, params: Any, mesh: Any) -> dict[str, Any]:
        """Held-out measures, run by the trainer every `train.eval_every` steps and at
        the end (when set); numbers only, logged with an "eval_" prefix."""
        del params, mesh
        return {}

    def summaries(self, params: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Images for the log (e.g. reconstruction grids); called on host, rarely."""
        del params, batch
        return {}
