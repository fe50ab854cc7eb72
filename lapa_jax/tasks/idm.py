"""An inverse dynamics model on action-labelled frame pairs (x_t, x_{t+1}) -> a_t.

The LAPA experiment's VPT-style baseline: trained on the few labelled demonstrations,
it pseudo-labels the action-free videos (data_pipelines.label_idm_actions), on which a
policy then pretrains. Actions are normalized with the train split's statistics,
saved in config.json (`action_stats`); L1 loss. The held-out report gives R^2 per
action dimension, next to a ridge probe on the raw pixel difference (the same cheap
baseline the quantizer report carries).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lapa_jax.action_heads import ActionStats
from lapa_jax.data import pipelines
from lapa_jax.data.sources import DataError, EpisodeSource
from lapa_jax.models.idm import IDM, IDMConfig
from lapa_jax.tasks.base import Task

PREDICT_BUCKET = 64


class NormalizedPairs:
    """Frame pairs one step apart, with the action between them normalized."""

    def __init__(self, pairs: pipelines.FramePairSource, stats: ActionStats):
        self.pairs, self.stats = pairs, stats

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        item = self.pairs[index]
        return {
            "frames": item["frames"],
            "target": self.stats.normalize(item["actions"][0]),
            "episode": item["episode"],
            "t": item["t"],
        }


class IDMTask(Task):
    name = "idm"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        d = config.data
        if config.get("action_stats"):
            self.stats = ActionStats.from_json(json.loads(config.action_stats))
        else:
            source = EpisodeSource(d.dir, d.spec, d.split)
            if not source.spec.has_actions:
                raise DataError(f"{d.dir}: spec {source.spec.name!r} has no actions to learn")
            actions = np.concatenate([source.actions(e) for e in range(len(source))])
            self.stats = ActionStats.fit(actions)
            config.action_stats = json.dumps(self.stats.to_json())
        model = dict(config.model.to_dict())
        model["action_dim"] = len(self.stats.mean)
        self.model_cfg = IDMConfig.from_dict(model)
        if self.model_cfg.image_size != d.image_size:
            raise ValueError(
                f"model.image_size {self.model_cfg.image_size} != data.image_size {d.image_size}"
            )
        self.model = IDM(self.model_cfg)
        self._predict_fn: Any = None

    def make_model(self) -> IDM:
        return self.model

    def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        s = self.model_cfg.image_size
        return {
            "frames": np.zeros((batch_size, 2, s, s, 3), np.float32),
            "target": np.zeros((batch_size, self.model_cfg.action_dim), np.float32),
        }

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
        return self.model.init(rng, batch["frames"])["params"], {}

    def loss(self, params, task_state, batch, rng, step):
        del task_state, rng, step
        pred = self.model.apply({"params": params}, batch["frames"])
        err = jnp.abs(pred - batch["target"])
        loss = jnp.mean(err)
        metrics = {"loss": loss, "l1_loss": loss}
        for i in range(err.shape[-1]):
            metrics[f"l1_dim_{i}"] = jnp.mean(err[:, i])
        return loss, (metrics, None)

    def pair_source(self, split: str) -> NormalizedPairs:
        d = self.config.data
        pairs = pipelines.FramePairSource(
            EpisodeSource(d.dir, d.spec, split),
            frame_gap=1,
            image=pipelines.ImageConfig(size=d.image_size, resize_mode=d.resize_mode),
            clip_to_last=True,
            with_actions=True,
        )
        return NormalizedPairs(pairs, self.stats)

    def make_data(self, split: str, global_batch_size: int, seed: int, shuffle: bool = True):
        return self.loader(self.pair_source(split), global_batch_size, seed, shuffle)

    def predict(self, params: Any, frames_BTHWC: np.ndarray) -> np.ndarray:
        """Actions [B, A] in the data's units for frame pairs [B, 2, H, W, C] in [0, 1]."""
        if self._predict_fn is None:
            self._predict_fn = jax.jit(lambda p, f: self.model.apply({"params": p}, f))
        # Padded to a multiple of PREDICT_BUCKET: episodes of every length (and a short
        # last batch) share one compilation instead of one each.
        n = len(frames_BTHWC)
        padded = -(-n // PREDICT_BUCKET) * PREDICT_BUCKET
        frames = np.concatenate(
            [frames_BTHWC, np.zeros((padded - n, *frames_BTHWC.shape[1:]), frames_BTHWC.dtype)]
        )
        return self.stats.denormalize(np.asarray(self._predict_fn(params, frames))[:n])

    def evaluate(self, params: Any, mesh: Any, max_steps: int | None = None) -> dict[str, Any]:
        from lapa_jax.evaluate_laq import downsample, ridge_r2

        del mesh
        d = self.config.data
        n_max = max_steps or int(self.config.get("eval_max_steps", 1024))
        train_src, val_src = self.pair_source(d.split), self.pair_source(d.eval_split)

        def take(src: NormalizedPairs, n: int) -> tuple[np.ndarray, np.ndarray]:
            idx = np.linspace(0, len(src) - 1, min(n, len(src))).round().astype(int)
            items = [src.pairs[int(i)] for i in idx]
            return np.stack([it["frames"] for it in items]), np.stack(
                [it["actions"][0] for it in items]
            )

        frames, actions = take(val_src, n_max)
        host_params = jax.device_get(params)
        pred = np.concatenate(
            [self.predict(host_params, frames[i : i + 64]) for i in range(0, len(frames), 64)]
        )
        var = actions.var(0) + 1e-12
        r2 = 1.0 - ((pred - actions) ** 2).mean(0) / var
        out: dict[str, Any] = {"held_out_pairs": len(frames)}
        for i, v in enumerate(r2):
            out[f"r2_dim_{i}"] = float(v)
        tr_frames, tr_actions = take(train_src, n_max)
        feats = lambda f: downsample(f[:, 1] - f[:, 0], 16).reshape(len(f), -1)  # noqa: E731
        base = ridge_r2(feats(tr_frames), tr_actions, feats(frames), actions)
        for i, v in enumerate(base):
            out[f"pixel_difference_ridge_r2_dim_{i}"] = float(v)
        return out
