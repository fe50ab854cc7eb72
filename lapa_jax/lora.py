"""LoRA finetuning: low-rank adapters on the language model, the base frozen.

    python -m lapa_jax.train --config experiments/action_finetune.py:metaworld \
        --workdir runs/ft_lora --config.init_from=runs/latent --config.lora.rank=8

`lora.rank > 0` gives every projection of the language model's blocks an adapter
(lapa_jax.models.layers.DenseGeneral) and trains only the adapters and the new action
head (`optimizer.trainable`); everything else keeps the base's values exactly. At the
end of the run the trained arrays are written to WORKDIR/adapter/ (adapter.npz and
adapter.json): a small file that, with the base (the `init_from` run, or the seeded
initialisation for a scratch run), rebuilds the finetuned model:

    params, config = load_adapter("runs/ft_lora/adapter")   # or Policy.load(..., from_adapter=True)
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

ADAPTER_DIR = "adapter"
# What a LoRA run trains: the adapters, and the head that replaced the latent head.
TRAINABLE = (r"(^|/)lora_[ab]$", r"^(latent|action)_")


def configure(config: ml_collections.ConfigDict, model: dict[str, Any]) -> None:
    """Applies config.lora (rank, alpha) to the model fields and the optimizer."""
    lora = config.get("lora")
    rank = int(lora.get("rank", 0)) if lora else 0
    if rank < 0:
        raise ValueError(f"lora.rank must be >= 0, got {rank}")
    if not rank:
        return
    alpha = float(lora.get("alpha", 16.0))
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"lora.alpha must be finite and > 0, got {alpha}")
    model["lora_rank"], model["lora_alpha"] = rank, alpha
    config.optimizer.trainable = list(TRAINABLE)


def trained_arrays(params: Any) -> dict[str, np.ndarray]:
    """The arrays a LoRA run changes, gathered to host (they are small)."""
    from jax.experimental import multihost_utils

    from lapa_jax.trainer import frozen_labels

    labels = traverse_util.flatten_dict(frozen_labels((), TRAINABLE)(params), sep="/")
    flat = traverse_util.flatten_dict(params, sep="/")
    out = {}
    for path, label in labels.items():
        if label == "train":
            x = flat[path]
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                x = multihost_utils.process_allgather(x, tiled=True)
            out[path] = np.asarray(x)
    return out


def save_adapter(workdir: str, params: Any, config: ml_collections.ConfigDict, step: int) -> str:
    """Writes WORKDIR/adapter/{adapter.npz, adapter.json}; returns the folder."""
    arrays = trained_arrays(params)
    if jax.process_index() != 0:
        return os.path.join(workdir, ADAPTER_DIR)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    out = os.path.join(workdir, ADAPTER_DIR)
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f"adapter.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(out, "adapter.npz"))
    meta = {
        "step": int(step),
        "rank": int(config.lora.rank),
        "alpha": float(config.lora.alpha),
        "base": os.path.abspath(config.init_from) if config.get("init_from") else "",
        "seed": int(config.train.seed),
        "arrays": len(arrays),
        "parameters": int(sum(x.size for x in arrays.values())),
        "model_parameters": total,
    }
    with open(os.path.join(out, "adapter.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return out


def load_adapter(adapter_dir: str) -> tuple[Any, ml_collections.ConfigDict, int]:
    """(params, config, step) of the finetuned model: the base rebuilt as training
    started (seeded initialisation, then the init_from run's backbone), the adapter's
    arrays on top. Every adapter array must fit a parameter of the model."""
    from lapa_jax.evaluate_laq import load_config
    from lapa_jax.pretrained import check_and_merge
    from lapa_jax.trainer import Trainer

    path = os.path.join(adapter_dir, "adapter.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no adapter at {path}")
    with open(os.path.join(adapter_dir, "adapter.json")) as f:
        meta = json.load(f)
    config = load_config(os.path.dirname(os.path.abspath(adapter_dir)))
    if meta["base"] and not os.path.isfile(os.path.join(meta["base"], "config.json")):
        raise FileNotFoundError(f"the adapter's base run {meta['base']} is not there")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable adapter: {e}") from e
    trainer = Trainer(config, "/nonexistent")
    params = jax.device_get(trainer.init_state().params)
    flat = traverse_util.flatten_dict(params, sep="/")
    arrays = check_and_merge({k: v.shape for k, v in flat.items()}, arrays, path)
    flat.update({k: np.asarray(v, flat[k].dtype) for k, v in arrays.items()})
    return traverse_util.unflatten_dict(flat, sep="/"), config, int(meta["step"])
