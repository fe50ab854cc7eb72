"""Config blocks every training experiment shares: the loop settings and the mesh."""

from __future__ import annotations

from typing import Any

import ml_collections

from lapa_jax.sharding import DEFAULT_RULES


def train_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`train`: steps, batch, logging, evaluation and checkpoint cadence."""
    c = dict(
        steps=2000,
        batch_size=32,
        seed=0,
        log_every=25,
        image_every=0,
        eval_every=0,
        checkpoint_every=500,
        keep_checkpoints=3,
        async_checkpoints=True,
        progress_bar=True,
    )
    unknown = set(overrides) - set(c)
    if unknown:
        raise ValueError(f"unknown train settings {sorted(unknown)}")
    c.update(overrides)
    return ml_collections.ConfigDict(c)


def tiny_train(**overrides: Any) -> dict[str, Any]:
    """`train` overrides of the tiny test variants: a few steps, every hook exercised."""
    return dict(
        dict(steps=6, batch_size=8, log_every=2, eval_every=6, checkpoint_every=6),
        progress_bar=False,
        **overrides,
    )


def add_mesh(c: ml_collections.ConfigDict) -> None:
    """A data-parallel mesh over every device and the default logical axis rules."""
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.sharding_rules = [
        list(r) if not isinstance(r[1], tuple) else [r[0], list(r[1])] for r in DEFAULT_RULES
    ]
