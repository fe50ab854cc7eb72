"""A trained quantizer's encoder as a batched, jitted, device-sharded labelling function.

Loads the LAQ model of a training run (its config.json and an Orbax checkpoint) and
maps uint8 frame pairs to latent action codes (and the code vectors). Every call has
the same batch shape (the last batch is padded), so one compiled function serves a
whole dataset, and a pair's label does not depend on what else is in its batch.
Devices are the ones this process owns: labelling needs no cross-host communication.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lapa_jax.models.laq import LAQ
from lapa_jax.sharding import make_mesh


def _quantize(model: LAQ, frames_BTHWC: jax.Array) -> Any:
    return model.quantizer(model.latent_difference(frames_BTHWC), False)


class LatentActionEncoder:
    def __init__(self, workdir: str, step: int | None = None, batch_size: int = 256):
        from lapa_jax.evaluate_laq import load_config, load_params
        from lapa_jax.tasks.laq import LAQTask

        self.workdir = os.path.abspath(workdir)
        self.config = load_config(workdir)
        if self.config.get("task") != "laq":
            raise ValueError(f"{workdir} is a {self.config.get('task')!r} run, not a quantizer")
        task = LAQTask(self.config)
        self.model: LAQ = task.model
        self.params, self.step = load_params(workdir, self.config, step)
        self.checkpoint_path = os.path.join(self.workdir, "checkpoints", str(self.step))
        cfg = self.model.cfg
        self.image_size = cfg.image_size
        self.frame_gap = int(self.config.data.frame_gap)
        self.resize_mode = str(self.config.data.resize_mode)
        self.num_tokens = cfg.num_latent_tokens
        self.num_codes = cfg.num_codes
        self.latent_dim = cfg.latent_dim

        self.mesh = make_mesh({"data": -1}, jax.local_devices())
        n_dev = self.mesh.devices.size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = -(-batch_size // n_dev) * n_dev  # a multiple of the devices
        batch = NamedSharding(self.mesh, PartitionSpec("data"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        # The restored parameters are replicated over the run's (possibly multi-host)
        # mesh; this process takes its own copy and places it on its local devices.
        host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), self.params)
        self.params = jax.device_put(host, replicated)
        model = self.model

        def encode(params: Any, pairs_u8: jax.Array) -> tuple[jax.Array, jax.Array]:
            frames = pairs_u8.astype(jnp.float32) / 255.0
            q = model.apply({"params": params}, frames, method=_quantize)
            return q.codes, q.hard

        self._encode = jax.jit(
            encode, in_shardings=(replicated, batch), out_shardings=(batch, batch)
        )
        self._batch_sharding = batch

    def describe(self) -> dict[str, Any]:
        """What produced a label: recorded in every labelled dataset."""
        return {
            "workdir": self.workdir,
            "checkpoint": self.checkpoint_path,
            "step": int(self.step),
            "image_size": self.image_size,
            "resize_mode": self.resize_mode,
            "trained_frame_gap": self.frame_gap,
            "num_latent_tokens": self.num_tokens,
            "num_codes": self.num_codes,
            "model": self.config.model.to_dict(),
        }

    def encode(self, pairs_NTHWC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, 2, S, S, 3] -> codes int32 [N, L] and code vectors float32 [N, L, D]."""
        pairs = np.asarray(pairs_NTHWC)
        s = self.image_size
        if pairs.ndim != 5 or pairs.shape[1:] != (2, s, s, 3) or pairs.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 frame pairs [N, 2, {s}, {s}, 3], got {pairs.dtype} {pairs.shape}"
            )
        codes, vectors = [], []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                pad = np.zeros((self.batch_size - n, *chunk.shape[1:]), np.uint8)
                chunk = np.concatenate([chunk, pad])
            c, v = jax.device_get(
                self._encode(self.params, jax.device_put(chunk, self._batch_sharding))
            )
            codes.append(np.asarray(c[:n], np.int32))
            vectors.append(np.asarray(v[:n], np.float32))
        if not codes:
            return (
                np.zeros((0, self.num_tokens), np.int32),
                np.zeros((0, self.num_tokens, self.latent_dim), np.float32),
            )
        return np.concatenate(codes), np.concatenate(vectors)
