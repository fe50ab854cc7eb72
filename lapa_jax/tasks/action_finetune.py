"""Stage 3: the latent head is replaced by a robot action head and the VLM is finetuned
on a small action-labelled dataset.

The binned head (the paper's): each action dimension is one token, predicted one
dimension after another through the same per-position embeddings and heads the latent
tokens used, now with one class per bin (ActionBins, fitted on the finetuning data's
train split and saved with the run). Starting points, from one config:
- LAPA: `init_from` = a latent-pretraining run (its vision encoder and language model
  are loaded; the latent head is not, having other shapes);
- scratch: `init_from` empty;
- action-pretrained (an upper bound): `init_from` = a run of this task trained on the
  video set's true actions.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from lapa_jax.action_bins import ActionBins
from lapa_jax.data import pipelines
from lapa_jax.data.sources import DataError, EpisodeSource
from lapa_jax.tasks.latent_pretrain import LatentPretrainTask, PromptedSteps

HEADS = ("binned",)


class BinnedActionSteps(PromptedSteps):
    """Steps with the prompt tokenized and the action as one bin token per dimension,
    under the "latent" key the model's token head reads."""

    def __init__(
        self, steps: pipelines.StepSource, tokenizer: Any, max_text_len: int, bins: ActionBins
    ):
        super().__init__(steps, tokenizer, max_text_len, bins.max_bins, bins.dim)
        self.bins = bins

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        item = self.steps[index]
        text = item["instruction"]
        if text not in self._cache:
            self._cache[text] = self.tokenizer.prompt(text, self.max_text_len)
        ids, mask = self._cache[text]
        action = np.asarray(item["action"], np.float32)[None]
        return {
            "image": item["image"],
            "text": ids,
            "text_mask": mask,
            "latent": self.bins.encode(action)[0],
            "action": action[0],
            "episode": item["episode"],
            "t": item["t"],
        }


class ActionFinetuneTask(LatentPretrainTask):
    name = "action_finetune"

    def __init__(self, config: ml_collections.ConfigDict):
        head = config.get("head", "binned")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.bins = self._bins(config)
        config.model.num_latent_tokens = self.bins.dim
        config.model.latent_codes = self.bins.max_bins
        init_from = config.get("init_from", "")
        if init_from:
            if not os.path.isfile(os.path.join(init_from, "config.json")):
                raise FileNotFoundError(f"init_from {init_from} is not a training run folder")
            config.init.vision_from = init_from
            config.init.language_from = init_from
        super().__init__(config)

    @staticmethod
    def _bins(config: ml_collections.ConfigDict) -> ActionBins:
        """Bins saved in the config (a resumed or served run) or fitted on the train split
        and stored there, so config.json carries them with every checkpoint."""
        saved = config.get("action_bins", "")
        if saved:
            return ActionBins.from_json(json.loads(saved))
        d = config.data
        source = EpisodeSource(d.dir, d.spec, d.split)
        if not source.spec.has_actions:
            raise DataError(f"{d.dir}: spec {source.spec.name!r} has no actions to finetune on")
        actions = np.concatenate([source.actions(e) for e in range(len(source))])
        # The paper's robots open or close the gripper; Meta-World's experts grade the
        # effort, so a binary gripper there loses a third of that dimension's variance.
        binary = bool(config.get("binary_gripper", True))
        bins = ActionBins.fit(
            actions,
            num_bins=int(config.get("num_bins", 256)),
            gripper_index=source.spec.gripper_index if binary else None,
        )
        config.action_bins = json.dumps(bins.to_json())
        return bins

    def step_source(self, split: str) -> BinnedActionSteps:
        d = self.config.data
        if self.tokenizer is None:
            raise ValueError("reading data needs data.tokenizer (a sentencepiece .model file)")
        source = EpisodeSource(d.dir, d.spec, split)
        if source.action_dim != self.bins.dim:
            raise DataError(
                f"{d.dir}: actions have {source.action_dim} dimensions, the bins {self.bins.dim}"
            )
        steps = pipelines.StepSource(
            source,
            pipelines.ImageConfig(size=d.image_size, resize_mode=d.resize_mode, dtype="float32"),
            with_actions=True,
            with_latent_actions=False,
        )
        return BinnedActionSteps(steps, self.tokenizer, self.model_cfg.max_text_len, self.bins)

    def evaluate(self, params: Any, mesh: Any, max_steps: int | None = None) -> dict[str, Any]:
        """Greedy action tokens on held-out steps: per-dimension token accuracy against
        the majority bin, and the error of the decoded actions against always
        predicting the train split's mean action."""
        pred, fields = self.decode_held_out(params, mesh, ("latent", "action"), max_steps)
        true, act = fields["latent"], fields["action"]
        train = self._train_actions()
        decoded = self.bins.decode(
            np.clip(pred, 0, [self.bins.bins(i) - 1 for i in range(self.bins.dim)])
        )
        out: dict[str, Any] = {"held_out_steps": len(pred)}
        majority = np.asarray(
            [np.bincount(self.bins.encode(train)[:, i]).argmax() for i in range(self.bins.dim)]
        )
        for i in range(self.bins.dim):
            out[f"token_accuracy_dim_{i}"] = float(np.mean(pred[:, i] == true[:, i]))
            out[f"majority_token_accuracy_dim_{i}"] = float(np.mean(true[:, i] == majority[i]))
        out["action_mse"] = float(np.mean((decoded - act) ** 2))
        out["mean_action_mse"] = float(np.mean((train.mean(0) - act) ** 2))
        out["bin_quantization_mse"] = float(
            np.mean((self.bins.decode(self.bins.encode(act)) - act) ** 2)
        )
        return out

    def _train_actions(self) -> np.ndarray:
        d = self.config.data
        source = EpisodeSource(d.dir, d.spec, d.split)
        return np.concatenate([source.actions(e) for e in range(len(source))])
