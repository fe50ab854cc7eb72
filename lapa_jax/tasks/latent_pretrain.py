"""Stage 2: a vision-language model learns to predict latent actions.

Trains on a latent-labelled dataset (data_pipelines.label_latent_actions): each step's
current image and instruction in, its latent action codes out (as many tokens and codes
as the labels' quantizer has, see `latent_layout`), with cross-entropy on the latent
tokens (and optionally a small next-token loss on the prompt). `evaluate`
measures on held-out episodes what matters: per-position and whole-action accuracy of
greedy decoding against the majority-class baselines, and whether the predictions
spread over the latent actions or collapse onto one.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from lapa_jax import lora, sharding
from lapa_jax.data import pipelines
from lapa_jax.data.sources import LABELS_FILE, DataError, EpisodeSource
from lapa_jax.models.vlm import VLM, VLMConfig
from lapa_jax.tasks.base import Task
from lapa_jax.text import Tokenizer


class EpisodeLabels:
    """Per-episode labels from an npz ("SPLIT/EPISODE" -> [T, ...], as
    data_pipelines.label_idm_actions writes them) that stand in for a dataset's own."""

    flag = "data.labels"  # the config field that names the file, for errors
    what = "labels"

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.flag}: no file at {path}")
        try:
            with np.load(path) as z:
                self.arrays = {k: z[k] for k in z.files if k != "__meta__"}
                meta = json.loads(str(z["__meta__"])) if "__meta__" in z.files else {}
        except (OSError, ValueError) as e:
            raise DataError(f"{self.flag} {path} is not a readable npz: {e}") from e
        self.path = path
        self.meta: dict[str, Any] = meta

    def check(self, key: str, labels: np.ndarray) -> np.ndarray:
        return labels

    def episode(self, split: str, episode: int, length: int) -> np.ndarray:
        key = f"{split}/{episode}"
        if key not in self.arrays:
            raise DataError(
                f"{self.path} has no {self.what} for {key}: labelled from another dataset?"
            )
        a = self.arrays[key]
        if a.ndim != 2 or len(a) != length:
            raise DataError(
                f"{self.path}: {key} has {self.what} of shape {a.shape}, the episode {length} steps"
            )
        return self.check(key, a)


class LatentLabels(EpisodeLabels):
    """Latent codes [T, L] from an npz instead of the dataset's (e.g. the oracle codes of
    data_pipelines.label_oracle_latents): latent pretraining on labels of known content."""

    flag = "data.latent_labels"
    what = "latent codes"

    def check(self, key: str, labels: np.ndarray) -> np.ndarray:
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{self.path}: {key} holds {labels.dtype} labels, not integer codes")
        return labels.astype(np.int32)


def latent_layout(data_dir: str, labels: LatentLabels | None) -> tuple[int, int]:
    """(tokens per latent action, codes per token) of the labels stage 2 trains on: from
    the quantizer recorded beside a labelled dataset, or from a codes npz's arrays and
    metadata. Why: a quantizer with another layout (e.g. 16 tokens, results/laq_ablation)
    then needs no second setting in stage 2 that could disagree with it."""
    if labels is not None:
        widths = {a.shape[1] for a in labels.arrays.values() if a.ndim == 2}
        if len(widths) != 1 or "codes" not in labels.meta:
            raise DataError(
                f"{labels.path}: cannot tell its latent layout (token widths {sorted(widths)}, "
                f"metadata keys {sorted(labels.meta)}); set model.num_latent_tokens and "
                "model.latent_codes"
            )
        return widths.pop(), int(labels.meta["codes"])
    path = os.path.join(data_dir, LABELS_FILE)
    try:
        with open(path) as f:
            q = json.load(f)["quantizer"]
        return int(q["num_latent_tokens"]), int(q["num_codes"])
    except FileNotFoundError:
        raise DataError(
            f"model.num_latent_tokens / latent_codes = 0 take the layout from {path}, which "
            "does not exist (not written by data_pipelines.label_latent_actions?); set both"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: no quantizer layout in it ({e!r}); set both") from e


class PromptedSteps:
    """Steps of a latent-labelled dataset with the prompt tokenized: image, text ids and
    mask, latent codes (numeric only, so batches go straight to devices)."""

    def __init__(
        self,
        steps: pipelines.StepSource,
        tokenizer: Tokenizer,
        max_text_len: int,
        latent_codes: int,
        num_latent_tokens: int,
        labels: LatentLabels | None = None,
        split: str = "",
        keep_tokens: int = 0,
    ):
        self.steps = steps
        self.keep_tokens = keep_tokens  # > 0: only the first keep_tokens tokens of a label
        self.labels, self.split = labels, split  # codes from an npz, not the steps
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.latent_codes = latent_codes
        self.num_latent_tokens = num_latent_tokens
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.steps)

    def head(self, codes_L: np.ndarray) -> np.ndarray:
        """The tokens trained on: all of a label's, or its first keep_tokens."""
        if not self.keep_tokens:
            return codes_L
        if codes_L.shape[-1] < self.keep_tokens:
            raise DataError(
                f"{self.steps.source.data_dir}: its latent actions have {codes_L.shape[-1]} "
                f"tokens, data.latent_tokens asks for the first {self.keep_tokens}"
            )
        return codes_L[..., : self.keep_tokens]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        item = self.steps[index]
        text = item["instruction"]
        if text not in self._cache:  # instructions repeat within and across episodes
            self._cache[text] = self.tokenizer.prompt(text, self.max_text_len)
        ids, mask = self._cache[text]
        if self.labels is None:
            codes = np.asarray(item["latent_action"], np.int32)
        else:
            e = int(item["episode"])
            length = int(self.steps.source.lengths[e])
            codes = self.labels.episode(self.split, e, length)[int(item["t"])]
        codes = self.head(codes)
        if (
            codes.shape != (self.num_latent_tokens,)
            or codes.min() < 0
            or codes.max() >= self.latent_codes
        ):
            raise DataError(
                f"{self.steps.source.data_dir} episode {int(item['episode'])} step {int(item['t'])}: "
                f"latent action {codes.tolist()} does not fit {self.num_latent_tokens} tokens of "
                f"{self.latent_codes} codes"
            )
        return {
            "image": item["image"],
            "text": ids,
            "text_mask": mask,
            "latent": codes,
            "episode": item["episode"],
            "t": item["t"],
        }


class LatentPretrainTask(Task):
    name = "latent_pretrain"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        d = config.data
        model = dict(config.model.to_dict())
        # No tokenizer is needed to build the model when its vocabulary size is given
        # (shape checks, benchmarks on random tokens); reading data needs one.
        self.tokenizer = Tokenizer(d.tokenizer) if d.tokenizer else None
        path = d.get("latent_labels", "")
        self.latent_labels = LatentLabels(path) if path else None
        self.latent_tokens = int(d.get("latent_tokens", 0))
        if self.latent_tokens < 0:
            raise ValueError(f"data.latent_tokens must be >= 0 (0: all), got {self.latent_tokens}")
        if self.tokenizer is None:
            if not model.get("vocab_size"):
                raise ValueError("set data.tokenizer (a sentencepiece .model) or model.vocab_size")
        elif model.get("vocab_size", 0) in (0, None):
            model["vocab_size"] = self.tokenizer.vocab_size
        elif model["vocab_size"] < self.tokenizer.vocab_size:
            raise ValueError(
                f"model.vocab_size {model['vocab_size']} < the tokenizer's {self.tokenizer.vocab_size}"
            )
        if self.latent_tokens:
            if model.get("num_latent_tokens") not in (0, None, self.latent_tokens):
                raise ValueError(
                    f"model.num_latent_tokens {model['num_latent_tokens']} != "
                    f"data.latent_tokens {self.latent_tokens}; set one of them"
                )
            model["num_latent_tokens"] = self.latent_tokens
        if not model.get("num_latent_tokens") or not model.get("latent_codes"):
            tokens, codes = latent_layout(d.dir, self.latent_labels)
            if self.latent_tokens > tokens:
                raise DataError(
                    f"data.latent_tokens {self.latent_tokens} > the {tokens} tokens per latent "
                    "action of the labels"
                )
            model["num_latent_tokens"] = model.get("num_latent_tokens") or tokens
            model["latent_codes"] = model.get("latent_codes") or codes
        # Kept in the run's config.json, so its checkpoint loads without the labels.
        with config.unlocked():
            config.model.num_latent_tokens = model["num_latent_tokens"]
            config.model.latent_codes = model["latent_codes"]
        lora.configure(config, model)
        self.model_cfg = VLMConfig.from_dict(model)
        if self.model_cfg.image_size != d.image_size:
            raise ValueError(
                f"model.image_size {self.model_cfg.image_size} != data.image_size {d.image_size}"
            )
        self.text_loss_weight = float(config.get("text_loss_weight", 0.0))
        if self.text_loss_weight < 0:
            raise ValueError(f"text_loss_weight must be >= 0, got {self.text_loss_weight}")
        self.model = VLM(self.model_cfg)
        self._decode_fn: Any = None

    # ---- model ---------------------------------------------------------------------

    def make_model(self) -> VLM:
        return self.model

    def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        c = self.model_cfg
        return {
            "image": np.zeros((batch_size, c.image_size, c.image_size, c.channels), np.float32),
            "text": np.zeros((batch_size, c.max_text_len), np.int32),
            "text_mask": np.ones((batch_size, c.max_text_len), bool),
            "latent": np.zeros((batch_size, c.num_latent_tokens), np.int32),
        }

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
        variables = self.model.init(
            rng, batch["image"], batch["text"], batch["text_mask"], batch["latent"]
        )
        return variables["params"], {}

    def tokens_per_example(self) -> int:
        return self.model_cfg.seq_len

    def after_run(self, workdir: str, params: Any, step: int) -> None:
        if self.model_cfg.lora_rank:
            lora.save_adapter(workdir, params, self.config, step)

    def pretrained(self, target_shapes):
        from lapa_jax.pretrained import pretrained_arrays

        return pretrained_arrays(self.config.get("init"), target_shapes)

    # ---- loss ----------------------------------------------------------------------

    def loss(self, params, task_state, batch, rng, step):
        del task_state, rng, step
        out = self.model.apply(
            {"params": params},
            batch["image"],
            batch["text"],
            batch["text_mask"],
            batch["latent"],
            with_text_logits=self.text_loss_weight > 0,
        )
        logits_BLC = out["latent_logits"]
        codes_BL = batch["latent"]
        logp = jax.nn.log_softmax(logits_BLC, -1)
        nll_BL = -jnp.take_along_axis(logp, codes_BL[..., None], -1)[..., 0]
        latent_loss = jnp.mean(nll_BL)
        loss = latent_loss
        correct_BL = jnp.argmax(logits_BLC, -1) == codes_BL
        metrics = {
            "latent_loss": latent_loss,
            "latent_accuracy_teacher_forced": jnp.mean(correct_BL),
            "action_accuracy_teacher_forced": jnp.mean(jnp.all(correct_BL, -1)),
        }
        for k in range(codes_BL.shape[1]):
            metrics[f"accuracy_position_{k}"] = jnp.mean(correct_BL[:, k])
        if self.text_loss_weight > 0:
            text, mask = batch["text"], batch["text_mask"].astype(jnp.float32)
            tlogp = jax.nn.log_softmax(out["text_logits"][:, :-1], -1)
            tnll = -jnp.take_along_axis(tlogp, text[:, 1:, None], -1)[..., 0]
            tmask = mask[:, 1:]
            text_loss = jnp.sum(tnll * tmask) / jnp.maximum(tmask.sum(), 1.0)
            loss = loss + self.text_loss_weight * text_loss
            metrics["text_loss"] = text_loss
        metrics["loss"] = loss
        return loss, (metrics, None)

    # ---- data ----------------------------------------------------------------------

    def step_source(self, split: str) -> PromptedSteps:
        d = self.config.data
        if self.tokenizer is None:
            raise ValueError("reading data needs data.tokenizer (a sentencepiece .model file)")
        source = EpisodeSource(d.dir, d.spec, split)
        if self.latent_labels is None and source.spec.latent_action_key is None:
            raise DataError(
                f"{d.dir}: spec {source.spec.name!r} has no latent_action_key; label the dataset "
                "with data_pipelines.label_latent_actions and pass its lapa_spec.json as data.spec"
            )
        steps = pipelines.StepSource(
            source,
            pipelines.ImageConfig(size=d.image_size, resize_mode=d.resize_mode, dtype="float32"),
            with_actions=False,
            with_latent_actions=self.latent_labels is None,
        )
        c = self.model_cfg
        return PromptedSteps(
            steps,
            self.tokenizer,
            c.max_text_len,
            c.latent_codes,
            c.num_latent_tokens,
            self.latent_labels,
            split,
            self.latent_tokens,
        )

    def make_data(self, split: str, global_batch_size: int, seed: int, shuffle: bool = True):
        return self.loader(self.step_source(split), global_batch_size, seed, shuffle)

    # ---- evaluation ----------------------------------------------------------------

    def decode_fn(self) -> Any:
        if self._decode_fn is None:
            m = self.model
            self._decode_fn = jax.jit(
                lambda p, img, txt, mask: m.apply({"params": p}, img, txt, mask, method=VLM.decode)
            )
        return self._decode_fn

    def decode_held_out(
        self, params: Any, mesh: Any, keys: tuple[str, ...], max_steps: int | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Greedy token predictions [N, L] on up to max_steps held-out steps spread over
        the eval split, and those steps' `keys` fields. One batch shape (the last batch
        padded), so one compilation; every process decodes the same steps."""
        d = self.config.data
        max_steps = max_steps or int(self.config.get("eval_max_steps", 512))
        src = self.step_source(d.eval_split)
        n = len(src)
        idx = np.linspace(0, n - 1, min(n, max_steps)).round().astype(int)
        dp = sharding.data_parallel_size(mesh)
        bs = max(dp, int(self.config.get("eval_batch_size", 64)) // dp * dp)
        preds: list[np.ndarray] = []
        fields: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        fn = self.decode_fn()
        for start in range(0, len(idx), bs):
            items = [src[int(i)] for i in idx[start : start + bs]]
            keep = len(items)
            items += [items[-1]] * (bs - keep)
            batch = {k: np.stack([it[k] for it in items]) for k in ("image", "text", "text_mask")}
            batch = sharding.host_batch_to_global(batch, mesh)
            with mesh:
                codes = fn(params, batch["image"], batch["text"], batch["text_mask"])
            # The global array holds one copy of the batch per process.
            codes = np.asarray(multihost_utils.process_allgather(codes, tiled=True))
            preds.append(codes[:keep])
            for k in keys:
                fields[k].append(np.stack([it[k] for it in items[:keep]]))
        return np.concatenate(preds), {k: np.concatenate(v) for k, v in fields.items()}

    def evaluate(self, params: Any, mesh: Any, max_steps: int | None = None) -> dict[str, Any]:
        """Greedy latent predictions on the held-out split against the true labels and
        the majority-class baselines (from the train split's labels)."""
        train_codes = _all_labels(self.step_source(self.config.data.split))
        pred, fields = self.decode_held_out(params, mesh, ("latent",), max_steps)
        return latent_metrics(pred, fields["latent"], train_codes)


def _all_labels(src: PromptedSteps) -> np.ndarray:
    """Every step's latent codes, read without decoding images."""
    source = src.steps.source
    if src.labels is not None:
        return src.head(
            np.concatenate(
                [
                    src.labels.episode(src.split, e, int(source.lengths[e]))
                    for e in range(len(source))
                ]
            )
        )
    out = []
    for e in range(len(source)):
        steps = source.steps(e)
        out.extend(source.latent_action(e, t, steps) for t in range(len(steps)))
    return src.head(np.stack(out).astype(np.int32))


def latent_metrics(
    pred_NL: np.ndarray, true_NL: np.ndarray, train_NL: np.ndarray
) -> dict[str, Any]:
    """Accuracies, the majority baselines and the spread of the predictions."""
    n, num_pos = true_NL.shape
    out: dict[str, Any] = {"held_out_steps": int(n)}
    for k in range(num_pos):
        out[f"accuracy_position_{k}"] = float(np.mean(pred_NL[:, k] == true_NL[:, k]))
        majority = np.bincount(train_NL[:, k]).argmax()
        out[f"majority_accuracy_position_{k}"] = float(np.mean(true_NL[:, k] == majority))
    out["latent_accuracy"] = float(np.mean(pred_NL == true_NL))
    out["majority_latent_accuracy"] = float(
        np.mean([out[f"majority_accuracy_position_{k}"] for k in range(num_pos)])
    )
    out["action_accuracy"] = float(np.mean(np.all(pred_NL == true_NL, -1)))
    train_actions = collections.Counter(map(tuple, train_NL.tolist()))
    top_action = np.asarray(train_actions.most_common(1)[0][0])
    out["majority_action_accuracy"] = float(np.mean(np.all(true_NL == top_action, -1)))
    pred_actions = collections.Counter(map(tuple, pred_NL.tolist()))
    counts = np.asarray(list(pred_actions.values()), np.float64)
    p = counts / counts.sum()
    out["predicted_distinct_actions"] = len(pred_actions)
    out["true_distinct_actions"] = len(set(map(tuple, true_NL.tolist())))
    out["predicted_top_action_share"] = float(p.max())
    out["predicted_action_entropy_bits"] = float(-(p * np.log2(p)).sum())
    for k in range(num_pos):
        c = np.bincount(pred_NL[:, k], minlength=int(max(pred_NL.max(), true_NL.max()) + 1))
        q = c / c.sum()
        out[f"predicted_code_perplexity_position_{k}"] = float(
            np.exp(-(q[q > 0] * np.log(q[q > 0])).sum())
        )
    return out
