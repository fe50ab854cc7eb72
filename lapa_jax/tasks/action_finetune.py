"""Stage 3: the latent head is replaced by a robot action head and the VLM is finetuned
on a small action-labelled dataset.

Heads (lapa_jax.action_heads): binned, the paper's (one token per action dimension,
predicted one after another through the per-position embeddings and heads the latent
tokens used, one class per bin), or chunked (the next K normalized actions from K
learned queries, L1 loss). The head's fitted state (bins or statistics, from the train
split) is saved in the run's config.json. Starting points, from one config:
- LAPA: `init_from` = a latent-pretraining run (its vision encoder and language model
  are loaded; the latent head is not, having other shapes);
- scratch: `init_from` empty;
- action-pretrained (an upper bound): `init_from` = a run of this task trained on the
  video set's true actions.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from lapa_jax import action_heads
from lapa_jax.data import pipelines
from lapa_jax.data.sources import DataError, EpisodeSource
from lapa_jax.tasks.latent_pretrain import EpisodeLabels, LatentPretrainTask, PromptedSteps


class ActionLabels(EpisodeLabels):
    """Per-episode actions [T, A] from an npz (data_pipelines.label_idm_actions) that stand
    in for a dataset's own: pseudo-labels of action-free video."""

    flag = "data.action_labels"
    what = "actions"

    def check(self, key: str, labels: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(labels)):
            raise DataError(f"{self.path}: {key} holds non-finite actions")
        return labels.astype(np.float32)


class ActionSteps(PromptedSteps):
    """Steps with the prompt tokenized, the current action, and the head's targets
    (bin tokens under the "latent" key the token head reads, or a normalized chunk)."""

    def __init__(
        self,
        steps: pipelines.StepSource,
        tokenizer: Any,
        max_text_len: int,
        head: Any,
        labels: ActionLabels | None = None,
        split: str = "",
    ):
        super().__init__(steps, tokenizer, max_text_len, 0, 0)
        self.head = head
        self.labels, self.split = labels, split
        self._actions: dict[int, np.ndarray] = {}  # per episode, read without images

    def episode_actions(self, e: int) -> np.ndarray:
        if e not in self._actions:
            source = self.steps.source
            if self.labels is not None:
                self._actions[e] = self.labels.episode(self.split, e, int(source.lengths[e]))
            else:
                self._actions[e] = source.actions(e)
        return self._actions[e]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        item = self.steps[index]
        text = item["instruction"]
        if text not in self._cache:
            self._cache[text] = self.tokenizer.prompt(text, self.max_text_len)
        ids, mask = self._cache[text]
        e, t = int(item["episode"]), int(item["t"])
        actions = self.episode_actions(e)
        return {
            "image": item["image"],
            "text": ids,
            "text_mask": mask,
            "action": actions[t],
            **self.head.targets(actions, t),
            "episode": item["episode"],
            "t": item["t"],
        }


class ActionFinetuneTask(LatentPretrainTask):
    name = "action_finetune"

    def __init__(self, config: ml_collections.ConfigDict):
        path = config.data.get("action_labels", "")
        self.action_labels = ActionLabels(path) if path else None
        self.head = action_heads.saved_head(config) or self._fit_head(config)
        with config.unlocked():  # config files from the command line arrive locked
            for key, value in self.head.model_overrides().items():
                config.model[key] = value
        self.bins = getattr(self.head, "bins", None)
        init_from = config.get("init_from", "")
        if init_from:
            if not os.path.isfile(os.path.join(init_from, "config.json")):
                raise FileNotFoundError(f"init_from {init_from} is not a training run folder")
            config.init.vision_from = init_from
            config.init.language_from = init_from
        super().__init__(config)

    def _split_actions(self, config: ml_collections.ConfigDict, split: str) -> np.ndarray:
        """Every action of a split (the dataset's own, or data.action_labels'), [N, A]."""
        d = config.data
        source = EpisodeSource(d.dir, d.spec, split)
        if self.action_labels is not None:
            return np.concatenate(
                [
                    self.action_labels.episode(split, e, int(source.lengths[e]))
                    for e in range(len(source))
                ]
            )
        if not source.spec.has_actions:
            raise DataError(
                f"{d.dir}: spec {source.spec.name!r} has no actions to finetune on "
                "(pseudo-label it and pass data.action_labels)"
            )
        return np.concatenate([source.actions(e) for e in range(len(source))])

    def _fit_head(self, config: ml_collections.ConfigDict) -> Any:
        d = config.data
        gripper = EpisodeSource(d.dir, d.spec, d.split).spec.gripper_index
        return action_heads.fit_head(config, self._split_actions(config, d.split), gripper)

    @property
    def chunked(self) -> bool:
        return self.head.name == "chunked"

    def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        batch = super().dummy_batch(batch_size)
        if self.chunked:
            k, a = self.head.chunk_size, self.head.action_dim
            batch["actions"] = np.zeros((batch_size, k, a), np.float32)
            batch["action_mask"] = np.ones((batch_size, k), np.float32)
        return batch

    def loss(self, params, task_state, batch, rng, step):
        if not self.chunked:
            return super().loss(params, task_state, batch, rng, step)
        out = self.model.apply(
            {"params": params}, batch["image"], batch["text"], batch["text_mask"], batch["latent"]
        )
        loss, metrics = self.head.loss(out["actions"].astype(jnp.float32), batch)
        metrics["loss"] = loss
        return loss, (metrics, None)

    def step_source(self, split: str) -> ActionSteps:
        d = self.config.data
        if self.tokenizer is None:
            raise ValueError("reading data needs data.tokenizer (a sentencepiece .model file)")
        source = EpisodeSource(d.dir, d.spec, split)
        labelled = self.action_labels is not None
        dim = (
            self.action_labels.episode(split, 0, int(source.lengths[0])).shape[1]
            if labelled
            else source.action_dim
        )
        if dim != self.head.action_dim:
            raise DataError(
                f"{d.dir}: actions have {dim} dimensions, the head {self.head.action_dim}"
            )
        steps = pipelines.StepSource(
            source,
            pipelines.ImageConfig(size=d.image_size, resize_mode=d.resize_mode, dtype="float32"),
            with_actions=not labelled,
            with_latent_actions=False,
        )
        return ActionSteps(
            steps, self.tokenizer, self.model_cfg.max_text_len, self.head, self.action_labels, split
        )

    def evaluate(self, params: Any, mesh: Any, max_steps: int | None = None) -> dict[str, Any]:
        """On held-out steps: the error of the decoded first action against always
        predicting the train split's mean action; per-dimension token accuracy against
        the majority bin (binned), or the L1 of the whole chunk (chunked)."""
        keys = ("action", "actions", "action_mask") if self.chunked else ("latent", "action")
        pred, fields = self.decode_held_out(params, mesh, keys, max_steps)
        act = fields["action"]
        train = self._train_actions()
        decoded = self.head.to_actions(pred)[:, 0]
        out: dict[str, Any] = {"held_out_steps": len(pred)}
        if self.chunked:
            mask = fields["action_mask"][..., None]
            err = np.abs(pred - fields["actions"]) * mask
            out["chunk_l1"] = float(err.sum() / (mask.sum() * pred.shape[-1]))
            out["mean_chunk_l1"] = float(
                (np.abs(self.head.normalize(train.mean(0)) - fields["actions"]) * mask).sum()
                / (mask.sum() * pred.shape[-1])
            )
        else:
            true, bins = fields["latent"], self.bins
            majority = np.asarray(
                [np.bincount(bins.encode(train)[:, i]).argmax() for i in range(bins.dim)]
            )
            for i in range(bins.dim):
                out[f"token_accuracy_dim_{i}"] = float(np.mean(pred[:, i] == true[:, i]))
                out[f"majority_token_accuracy_dim_{i}"] = float(np.mean(true[:, i] == majority[i]))
            out["bin_quantization_mse"] = float(np.mean((bins.decode(bins.encode(act)) - act) ** 2))
        out["action_mse"] = float(np.mean((decoded - act) ** 2))
        out["mean_action_mse"] = float(np.mean((train.mean(0) - act) ** 2))
        return out

    def _train_actions(self) -> np.ndarray:
        return self._split_actions(self.config, self.config.data.split)
