"""Stage 1: train the latent action quantizer on frame pairs."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lapa_jax.data import pipelines
from lapa_jax.data.sources import EpisodeSource
from lapa_jax.metric_writers import image_grid
from lapa_jax.models import quantizers
from lapa_jax.models.laq import LAQ, LAQConfig
from lapa_jax.tasks.base import Task

DEAD_CODE_SOURCES = ("live_codes", "latents")
CHANGE_THRESHOLD = 0.05  # a pixel "changes" if its channels move by more than this in sum


def changed_pixels(first_BHWC: jax.Array, target_BHWC: jax.Array, threshold: float) -> jax.Array:
    """[B, H, W] float mask of the pixels that differ between the two frames."""
    return (jnp.abs(target_BHWC - first_BHWC).sum(-1) > threshold).astype(jnp.float32)


def usage_entropy_gap(logits_BLK: jax.Array, temperature: float) -> jax.Array:
    """log K minus the entropy of the batch-mean soft code assignment, averaged over
    positions: zero when every code takes an equal share of the batch."""
    p_LK = jax.nn.softmax(logits_BLK / temperature, axis=-1).mean(0)
    ent_L = -jnp.sum(p_LK * jnp.log(jnp.maximum(p_LK, 1e-12)), -1)
    return jnp.mean(jnp.log(logits_BLK.shape[-1]) - ent_L)


def translate(frames_BTHWC: jax.Array, shifts_B2: jax.Array, max_shift: int) -> jax.Array:
    """Each sample's frames moved by the same whole-pixel (dy, dx), |d| <= max_shift, with
    the border pixels repeated: out[y, x] = in[y + dy, x + dx]."""
    p = max_shift
    _, t, h, w, c = frames_BTHWC.shape
    padded = jnp.pad(frames_BTHWC, ((0, 0), (0, 0), (p, p), (p, p), (0, 0)), mode="edge")

    def one(f_THWC: jax.Array, s_2: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(f_THWC, (0, p + s_2[0], p + s_2[1], 0), (t, h, w, c))

    return jax.vmap(one)(padded, shifts_B2)


def cross_views(
    frames_BTHWC: jax.Array, rng: jax.Array, max_shift: int
) -> tuple[jax.Array, jax.Array]:
    """Two translated views of every pair: the latent is encoded from the first and
    decoded onto the second's x_t. A latent that says where things are (the state) is
    then wrong by the views' offset; only how things move carries over."""
    k_a, k_b = jax.random.split(rng)
    shape = (frames_BTHWC.shape[0], 2)
    views = [
        translate(frames_BTHWC, jax.random.randint(k, shape, -max_shift, max_shift + 1), max_shift)
        for k in (k_a, k_b)
    ]
    return views[0], views[1]


def downsample(img_NHWC: Any, size: int) -> Any:
    """Average-pools square images to size x size (numpy or jax arrays): the pixel-
    difference baseline's features, and the frame-difference head's target."""
    n, h, _, c = img_NHWC.shape
    f = h // size
    return img_NHWC[:, : size * f, : size * f].reshape(n, size, f, size, f, c).mean((2, 4))


def diff_nmse(pred_BhwC: jax.Array, first_BHWC: jax.Array, target_BHWC: jax.Array) -> jax.Array:
    """Error of a predicted frame difference, average-pooled to pred's side, relative to
    the difference's own energy: scale-free, 1.0 for predicting no change."""
    diff_BhwC = downsample(target_BHWC - first_BHWC, pred_BhwC.shape[1])
    energy = jnp.maximum(jnp.mean(jnp.square(diff_BhwC)), 1e-8)
    return jnp.mean(jnp.square(pred_BhwC - diff_BhwC)) / jax.lax.stop_gradient(energy)


def psnr(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Per-sample PSNR in dB for images in [0, 1]."""
    mse = jnp.mean(jnp.square(jnp.clip(pred, 0.0, 1.0) - target), axis=tuple(range(1, pred.ndim)))
    return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def perplexity(counts: jax.Array) -> jax.Array:
    p = counts / jnp.maximum(counts.sum(-1, keepdims=True), 1e-9)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-12)), 0.0), -1))


class LAQTask(Task):
    name = "laq"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.model_cfg = LAQConfig.from_dict(config.model.to_dict())
        if self.model_cfg.image_size != config.data.image_size:
            raise ValueError(
                f"model.image_size {self.model_cfg.image_size} != data.image_size {config.data.image_size}"
            )
        dc = config.dead_code
        if dc.source not in DEAD_CODE_SOURCES:
            raise ValueError(
                f"dead_code.source must be one of {DEAD_CODE_SOURCES}, got {dc.source!r}"
            )
        if dc.window < 1 or not 0.0 <= dc.threshold <= 1.0:
            raise ValueError(
                f"dead_code.window must be >= 1 and threshold in [0, 1], got {dc.window}, {dc.threshold}"
            )
        lc = config.get("loss", {})
        self.changed_weight = float(lc.get("changed_weight", 0.0))
        self.change_threshold = float(lc.get("change_threshold", CHANGE_THRESHOLD))
        self.usage_entropy_weight = float(lc.get("usage_entropy_weight", 0.0))
        self.usage_entropy_temperature = float(lc.get("usage_entropy_temperature", 1.0))
        self.view_shift = int(lc.get("view_shift", 0))
        self.diff_weight = float(lc.get("diff_weight", 0.0))
        if self.diff_weight < 0 or (self.diff_weight > 0) != (self.model_cfg.diff_head_size > 0):
            raise ValueError(
                "loss.diff_weight must be >= 0, and > 0 exactly when model.diff_head_size > 0; "
                f"got {self.diff_weight} and {self.model_cfg.diff_head_size}"
            )
        if not 0 <= self.view_shift < config.data.image_size // 2:
            raise ValueError(
                f"loss.view_shift must be in [0, image_size / 2), got {self.view_shift}"
            )
        if self.changed_weight < 0 or self.usage_entropy_weight < 0:
            raise ValueError(
                "loss.changed_weight and loss.usage_entropy_weight must be >= 0, got "
                f"{self.changed_weight}, {self.usage_entropy_weight}"
            )
        if self.usage_entropy_temperature <= 0:
            raise ValueError(
                f"loss.usage_entropy_temperature must be > 0, got {self.usage_entropy_temperature}"
            )
        if self.usage_entropy_weight > 0 and self.model_cfg.quantizer == "fsq":
            raise ValueError(
                "loss.usage_entropy_weight needs an NSVQ quantizer (FSQ has no logits)"
            )
        self.codebook_ema = float(config.get("codebook_ema", 0.0))
        if not 0.0 <= self.codebook_ema < 1.0:
            raise ValueError(f"codebook_ema must be in [0, 1), got {self.codebook_ema}")
        if self.codebook_ema > 0 and self.model_cfg.quantizer == "fsq":
            raise ValueError("codebook_ema needs an NSVQ quantizer (FSQ has no codebook)")
        self.model = LAQ(self.model_cfg)
        self._recon_fn = None

    # ---- model ---------------------------------------------------------------------

    def make_model(self) -> LAQ:
        return self.model

    def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        s = self.model_cfg.image_size
        return {"frames": np.zeros((batch_size, 2, s, s, self.model_cfg.channels), np.float32)}

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
        k_params, k_noise = jax.random.split(rng)
        variables = self.model.init(
            {"params": k_params, "noise": k_noise}, batch["frames"], train=True
        )
        k = self.model_cfg.num_codes
        usage = quantizers.init_usage_state(k)
        if self.model_cfg.quantizer == "rvq":  # one codebook, one usage record per stage
            stages = self.model_cfg.num_latent_tokens
            usage = jax.tree.map(lambda x: jnp.stack([x] * stages), usage)
        task_state = {
            "usage": usage,
            # EMA of per-position code counts: usage and perplexity "over a window".
            "code_ema": jnp.zeros((self.model_cfg.num_latent_tokens, k), jnp.float32),
        }
        return variables["params"], task_state

    # ---- loss ----------------------------------------------------------------------

    def loss(self, params, task_state, batch, rng, step):
        frames = batch["frames"]
        decode_first = None
        if self.view_shift > 0:
            rng, k_views = jax.random.split(rng)
            frames, decoded = cross_views(frames, k_views, self.view_shift)
            decode_first = decoded[:, 0]
        else:
            decoded = frames
        out = self.model.apply(
            {"params": params},
            frames,
            train=True,
            decode_first_BHWC=decode_first,
            rngs={"noise": rng},
        )
        first = decoded[:, 0].astype(jnp.float32)
        target = decoded[:, 1].astype(jnp.float32)
        sq_err_BHW = jnp.mean(jnp.square(out["recon"] - target), -1)
        recon_loss = jnp.mean(sq_err_BHW)
        loss = recon_loss
        extra: dict[str, jax.Array] = {}
        if self.changed_weight > 0:
            # Most pixels are static; weighting the ones that move makes the motion, which
            # only the latent can explain, worth as much as the background.
            changed_BHW = changed_pixels(first, target, self.change_threshold)
            w_BHW = 1.0 + self.changed_weight * changed_BHW
            loss = jnp.sum(w_BHW * sq_err_BHW) / jnp.sum(w_BHW)
            extra["fraction_changed"] = jnp.mean(changed_BHW)
            extra["changed_mse"] = jnp.sum(changed_BHW * sq_err_BHW) / jnp.maximum(
                changed_BHW.sum(), 1.0
            )
        if self.diff_weight > 0:
            nmse = diff_nmse(out["diff"], first, target)
            loss = loss + self.diff_weight * nmse
            extra["diff_nmse"] = nmse
        if self.usage_entropy_weight > 0:
            gap = usage_entropy_gap(out["logits"], self.usage_entropy_temperature)
            loss = loss + self.usage_entropy_weight * gap
            extra["usage_entropy_gap"] = gap
        codes_BL = out["codes"]
        k = self.model_cfg.num_codes
        onehot_BLK = jax.nn.one_hot(codes_BL, k, dtype=jnp.float32)
        counts_LK = onehot_BLK.sum(0)
        pooled = counts_LK.sum(0)
        metrics = {
            "loss": loss,
            "recon_mse": recon_loss,
            **extra,
            "psnr": jnp.mean(psnr(out["recon"], target)),
            "copy_psnr": jnp.mean(psnr(first, target)),
            "codes_used_batch": jnp.sum(pooled > 0).astype(jnp.float32),
            "perplexity_batch": perplexity(pooled),
            "quant_error": jnp.mean(
                jnp.linalg.norm(
                    out["quantizer_inputs"] - jax.lax.stop_gradient(out["hard"]), axis=-1
                )
            ),
            "delta_norm": jnp.mean(jnp.linalg.norm(out["delta"], axis=-1)),
        }
        aux = {
            "codes": codes_BL,
            "counts_LK": counts_LK,
            "quantizer_inputs": jax.lax.stop_gradient(out["quantizer_inputs"]),
        }
        return loss, (metrics, aux)

    def after_update(self, params, task_state, aux, rng, step):
        cfg = self.config
        decay = cfg.usage_ema_decay
        counts_LK = aux["counts_LK"] / jnp.maximum(aux["counts_LK"].sum(-1, keepdims=True), 1.0)
        code_ema = jnp.where(
            step == 0, counts_LK, decay * task_state["code_ema"] + (1 - decay) * counts_LK
        )
        if self.codebook_ema > 0:
            params = self._ema_codebook(params, aux)
        usage = task_state["usage"]
        dc = cfg.dead_code
        if self.model_cfg.quantizer != "fsq" and dc.enabled:
            replace = functools.partial(
                quantizers.replace_dead_codes,
                step=step,
                window=dc.window,
                threshold=dc.threshold,
                until_step=dc.until_step,
                source=dc.source,
                perturb=dc.perturb,
            )
            codebook = params["quantizer"]["codebook"]
            inputs_BLD = aux["quantizer_inputs"]
            if self.model_cfg.quantizer == "rvq":  # each stage from its own residuals
                stages = codebook.shape[0]
                new_codebook, usage = jax.vmap(
                    lambda cb, u, c, x, r: replace(cb, u, c[:, None], x, rng=r)
                )(
                    codebook,
                    usage,
                    aux["codes"].T,
                    inputs_BLD.transpose(1, 0, 2),
                    jax.random.split(rng, stages),
                )
            else:
                new_codebook, usage = replace(
                    codebook,
                    usage,
                    aux["codes"],
                    inputs_BLD.reshape(-1, inputs_BLD.shape[-1]),
                    rng=rng,
                )
            params = {**params, "quantizer": {**params["quantizer"], "codebook": new_codebook}}
        per_pos_ppl = perplexity(code_ema)
        metrics = {
            "codes_used_window": jnp.sum(code_ema.sum(0) > 1e-3).astype(jnp.float32),
            "min_codes_used_per_position": jnp.min(jnp.sum(code_ema > 1e-3, -1)).astype(
                jnp.float32
            ),
            "perplexity_window": perplexity(code_ema.sum(0)),
            "min_perplexity_per_position": jnp.min(per_pos_ppl),
            "dead_codes_replaced": usage["last_replaced"].sum().astype(jnp.float32),
            "dead_codes_replaced_total": usage["replaced_total"].sum().astype(jnp.float32),
        }
        return params, {"usage": usage, "code_ema": code_ema}, metrics

    def _ema_codebook(self, params: Any, aux: dict[str, jax.Array]) -> Any:
        """Moves each stage's (or the shared) codebook towards its inputs' cluster means."""
        codebook = params["quantizer"]["codebook"]
        inputs_BLD = aux["quantizer_inputs"]
        step = functools.partial(quantizers.ema_codebook_update, decay=self.codebook_ema)
        if self.model_cfg.quantizer == "rvq":  # stage s from stage s's residuals
            new = jax.vmap(step)(codebook, aux["codes"].T, inputs_BLD.transpose(1, 0, 2))
        else:
            new = step(codebook, aux["codes"], inputs_BLD.reshape(-1, inputs_BLD.shape[-1]))
        return {**params, "quantizer": {**params["quantizer"], "codebook": new}}

    # ---- data ----------------------------------------------------------------------

    def frame_pair_source(self, split: str) -> pipelines.FramePairSource:
        d = self.config.data
        source = EpisodeSource(d.dir, d.spec, split)
        return pipelines.FramePairSource(
            source,
            d.frame_gap,
            pipelines.ImageConfig(size=d.image_size, resize_mode=d.resize_mode, dtype="float32"),
            clip_to_last=d.clip_to_last,
        )

    def make_data(self, split: str, global_batch_size: int, seed: int, shuffle: bool = True):
        return self.loader(self.frame_pair_source(split), global_batch_size, seed, shuffle)

    # ---- summaries -----------------------------------------------------------------

    def reconstruct(self, params: Any, frames: Any) -> np.ndarray:
        if self._recon_fn is None:
            self._recon_fn = jax.jit(
                lambda p, f: self.model.apply({"params": p}, f, train=False)["recon"]
            )
        return np.asarray(self._recon_fn(params, frames))

    def summaries(self, params: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        frames = np.asarray(jax.device_get(batch["frames"]))[:8]
        recon = np.clip(self.reconstruct(params, frames), 0, 1)
        rows = []
        for i in range(len(frames)):
            diff_true = np.abs(frames[i, 1] - frames[i, 0])
            diff_pred = np.abs(recon[i] - frames[i, 0])
            rows.append(
                [
                    frames[i, 0],
                    frames[i, 1],
                    recon[i],
                    np.clip(diff_true * 4, 0, 1),
                    np.clip(diff_pred * 4, 0, 1),
                ]
            )
        return {"reconstructions": image_grid(rows)}
