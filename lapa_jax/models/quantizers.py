"""Quantizers behind one interface: NSVQ (the paper's) and FSQ.

Both map continuous latents z [B, L, D] to (quantized [B, L, D], codes [B, L] int32)
and back from codes with `lookup`, so the LAQ model and every tool that labels or
decodes latent actions do not care which one is used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapa_jax.models.layers import DenseGeneral, LayerNorm


@dataclasses.dataclass
class QuantizerOutput:
    quantized: jax.Array  # [B, L, D], what the decoder sees
    codes: jax.Array  # [B, L] int32
    hard: jax.Array  # [B, L, D], the code vectors themselves
    logits: jax.Array | None = None  # [B, L, K] negative squared distances (NSVQ only)
    inputs: jax.Array | None = None  # [B, L, D] what each position's codebook quantized


class NSVQ(nn.Module):
    """Noise-substitution VQ (Vali and Backstrom, 2022).

    In training the output is z + (||z - q|| / ||n||) n with n ~ N(0, I): its distance to
    z equals the quantization error, yet it is differentiable in z and (through
    ||z - q||) in the codebook, so neither a straight-through estimator nor a
    commitment loss is needed. At inference the hard code q is returned.
    """

    num_codes: int
    dim: int
    init_scale: float = 1.0
    normalize: bool = False  # latents and codes on the unit sphere: cosine distance

    def setup(self) -> None:
        self.raw_codebook = self.param(
            "codebook",
            nn.with_logical_partitioning(
                nn.initializers.normal(self.init_scale), ("codebook", "latent")
            ),
            (self.num_codes, self.dim),
            jnp.float32,
        )

    @property
    def codebook_size(self) -> int:
        return self.num_codes

    def _prep(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        return _l2_normalize(x) if self.normalize else x

    @property
    def codebook(self) -> jax.Array:
        return self._prep(self.raw_codebook)

    def _neg_sq_distances(self, z_BLD: jax.Array) -> jax.Array:
        cb = self.codebook
        return -(
            jnp.sum(z_BLD**2, -1, keepdims=True)
            - 2 * jnp.einsum("bld,kd->blk", z_BLD, cb)
            + jnp.sum(cb**2, -1)
        )

    def nearest(self, z_BLD: jax.Array) -> jax.Array:
        return jnp.argmax(self._neg_sq_distances(self._prep(z_BLD)), axis=-1).astype(jnp.int32)

    def lookup(self, codes_BL: jax.Array) -> jax.Array:
        return jnp.take(self.codebook, codes_BL, axis=0)

    def __call__(self, z_BLD: jax.Array, train: bool) -> QuantizerOutput:
        z = self._prep(z_BLD)
        logits_BLK = self._neg_sq_distances(z)
        codes_BL = jnp.argmax(logits_BLK, axis=-1).astype(jnp.int32)
        hard_BLD = self.lookup(codes_BL)
        out = _noise_substitute(self, z, hard_BLD) if train else hard_BLD
        return QuantizerOutput(out, codes_BL, hard_BLD, logits_BLK, z)


def _noise_substitute(module: nn.Module, z: jax.Array, hard: jax.Array) -> jax.Array:
    """z moved by the quantization error's length in a random direction."""
    noise = jax.random.normal(module.make_rng("noise"), z.shape, jnp.float32)
    err = jnp.sqrt(jnp.sum((z - hard) ** 2, -1, keepdims=True) + 1e-12)
    noise_norm = jnp.sqrt(jnp.sum(noise**2, -1, keepdims=True) + 1e-12)
    return z + (err / noise_norm) * noise


class ResidualNSVQ(nn.Module):
    """One latent vector [B, 1, D] quantized in `num_stages` steps (residual VQ), NSVQ's
    noise substitution at each: stage s quantizes what stages < s left over, with its own
    codebook, and the decoder sees one token per stage [B, num_stages, D].

    Why (issue 8): with one codebook shared by positions pooled from the same evidence,
    positions either repeat each other or starve. Here stage s can only describe what the
    earlier stages missed, and the sum of the chosen code vectors, which approximates the
    latent, is a linear function of the one-hot codes, so a linear probe on the codes can
    read whatever a probe on the quantized latent can.
    """

    num_codes: int
    dim: int
    num_stages: int
    init_scale: float = 1.0
    normalize: bool = False  # the latent (not the residuals) on the unit sphere

    def setup(self) -> None:
        def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
            # Residuals shrink stage by stage; so do the initial codes.
            shrink = 0.5 ** jnp.arange(shape[0], dtype=dtype)[:, None, None]
            scale = self.init_scale / math.sqrt(shape[-1])
            return jax.random.normal(key, shape, dtype) * scale * shrink

        self.codebook = self.param(
            "codebook",
            nn.with_logical_partitioning(init, (None, "codebook", "latent")),
            (self.num_stages, self.num_codes, self.dim),
            jnp.float32,
        )

    @property
    def codebook_size(self) -> int:
        return self.num_codes

    def lookup(self, codes_BL: jax.Array) -> jax.Array:
        return self.codebook[jnp.arange(self.num_stages), codes_BL]

    def __call__(self, z_BLD: jax.Array, train: bool) -> QuantizerOutput:
        if z_BLD.shape[1] != 1:
            raise ValueError(f"ResidualNSVQ quantizes one vector per sample, got {z_BLD.shape}")
        residual_BD = z_BLD[:, 0].astype(jnp.float32)
        if self.normalize:
            residual_BD = _l2_normalize(residual_BD)
        inputs, logits, codes, hards, outs = [], [], [], [], []
        for s in range(self.num_stages):
            cb_KD = self.codebook[s]
            logits_BK = -(
                jnp.sum(residual_BD**2, -1, keepdims=True)
                - 2 * residual_BD @ cb_KD.T
                + jnp.sum(cb_KD**2, -1)
            )
            code_B = jnp.argmax(logits_BK, -1).astype(jnp.int32)
            hard_BD = cb_KD[code_B]
            outs.append(_noise_substitute(self, residual_BD, hard_BD) if train else hard_BD)
            inputs.append(residual_BD)
            logits.append(logits_BK)
            codes.append(code_B)
            hards.append(hard_BD)
            residual_BD = residual_BD - hard_BD
        stack = lambda xs: jnp.stack(xs, axis=1)  # noqa: E731
        return QuantizerOutput(
            stack(outs), stack(codes), stack(hards), stack(logits), stack(inputs)
        )


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al., 2023): project to len(levels) dims,
    bound each with tanh, round to its levels (straight-through), project back.

    The implicit codebook has prod(levels) entries and cannot collapse the way a learned
    codebook can; `pre_norm` normalises before the projection so tanh does not saturate.
    """

    levels: Sequence[int]
    dim: int
    pre_norm: bool = True

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def _consts(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        levels = jnp.asarray(self.levels, jnp.float32)
        basis = jnp.asarray(
            [math.prod(self.levels[:i]) for i in range(len(self.levels))], jnp.int32
        )
        return levels, basis, jnp.floor(levels / 2)

    def _bound(self, z: jax.Array) -> jax.Array:
        levels, _, _ = self._consts()
        eps = 1e-3
        half_l = (levels - 1) * (1 + eps) / 2
        offset = jnp.where(levels % 2 == 0, 0.5, 0.0)
        shift = jnp.tan(offset / half_l)  # as in the reference implementation
        return jnp.tanh(z + shift) * half_l - offset

    def setup(self) -> None:
        if self.pre_norm:
            self.norm = LayerNorm(axis_name="latent")
        self.proj_in = DenseGeneral(len(self.levels), ("latent", None))
        self.proj_out = DenseGeneral(self.dim, (None, "latent"))

    def __call__(self, z_BLD: jax.Array, train: bool) -> QuantizerOutput:
        del train  # FSQ is deterministic
        if self.pre_norm:
            z_BLD = self.norm(z_BLD)
        bounded = self._bound(self.proj_in(z_BLD).astype(jnp.float32))
        rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
        _, basis, half_width = self._consts()
        codes_BL = jnp.sum((jnp.round(bounded) + half_width).astype(jnp.int32) * basis, -1)
        out = self.proj_out(rounded / half_width)
        return QuantizerOutput(out, codes_BL, jax.lax.stop_gradient(out), inputs=z_BLD)

    def lookup(self, codes_BL: jax.Array) -> jax.Array:
        levels, basis, half_width = self._consts()
        digits = (codes_BL[..., None] // basis) % levels.astype(jnp.int32)
        return self.proj_out((digits.astype(jnp.float32) - half_width) / half_width)


def codebook_size(kind: str, num_codes: int, levels: Sequence[int]) -> int:
    return math.prod(levels) if kind == "fsq" else num_codes


# ---- dead-code replacement (NSVQ) -----------------------------------------------------


def init_usage_state(num_codes: int) -> dict[str, jax.Array]:
    """Usage counters, part of the train state: identical on every host, checkpointed."""
    return {
        "batches_used": jnp.zeros((num_codes,), jnp.int32),  # batches in the window using each code
        "window_steps": jnp.zeros((), jnp.int32),
        "replaced_total": jnp.zeros((), jnp.int32),
        "last_replaced": jnp.zeros((), jnp.int32),
    }


def replace_dead_codes(
    codebook_KD: jax.Array,
    usage: dict[str, jax.Array],
    codes_BL: jax.Array,
    latents_ND: jax.Array,
    step: jax.Array,
    rng: jax.Array,
    *,
    window: int,
    threshold: float,
    until_step: int,
    source: str,
    perturb: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Counts code use per batch; at the end of each window, re-seeds codes used in fewer
    than `threshold` of its batches.

    source="live_codes" (the paper's): perturbed copies of codes drawn by usage;
    source="latents": recent encoder outputs from this batch (a k-means restart).
    Replacement stops at `until_step` (negative: never stops).
    """
    num_codes = codebook_KD.shape[0]
    used_now = jnp.zeros((num_codes,), jnp.int32).at[codes_BL.reshape(-1)].max(1)
    batches_used = usage["batches_used"] + used_now
    window_steps = usage["window_steps"] + 1
    window_done = window_steps >= window
    active = window_done & ((until_step < 0) | (step < until_step))
    dead = active & (batches_used.astype(jnp.float32) < threshold * window)

    k_pick, k_noise = jax.random.split(rng)
    scale = jnp.std(codebook_KD) + 1e-6
    if source == "live_codes":
        weights = batches_used.astype(jnp.float32) * (~dead)
        weights = jnp.where(weights.sum() > 0, weights, jnp.ones_like(weights))
        picks = jax.random.choice(k_pick, num_codes, (num_codes,), p=weights / weights.sum())
        seeds = codebook_KD[picks]
    elif source == "latents":
        picks = jax.random.choice(
            k_pick, latents_ND.shape[0], (num_codes,), replace=latents_ND.shape[0] < num_codes
        )
        seeds = latents_ND[picks].astype(codebook_KD.dtype)
        scale = jnp.std(latents_ND) + 1e-6
    else:
        raise ValueError(f"unknown dead-code source {source!r}")
    seeds = seeds + perturb * scale * jax.random.normal(k_noise, seeds.shape, seeds.dtype)
    new_codebook = jnp.where(dead[:, None], seeds, codebook_KD)
    n_replaced = dead.sum().astype(jnp.int32)
    new_usage = {
        "batches_used": jnp.where(window_done, 0, batches_used),
        "window_steps": jnp.where(window_done, 0, window_steps),
        "replaced_total": usage["replaced_total"] + n_replaced,
        "last_replaced": jnp.where(window_done, n_replaced, usage["last_replaced"]),
    }
    return new_codebook, new_usage


def ema_codebook_update(
    codebook_KD: jax.Array, codes_N: jax.Array, latents_ND: jax.Array, decay: float
) -> jax.Array:
    """One online k-means step: each code used in this batch moves towards the mean of the
    latents assigned to it, by (1 - decay); unused codes stay (dead-code replacement is
    their remedy).

    Why (issue 8): post-hoc k-means of a trained quantizer's own latent can probe better
    than its codes (0.67 against 0.54 for one rvq_mask run), so the codebook that the
    gradient of NSVQ's noise length moves lags the clusters of its inputs.
    """
    num_codes = codebook_KD.shape[0]
    onehot_NK = jax.nn.one_hot(codes_N.reshape(-1), num_codes, dtype=jnp.float32)
    counts_K = onehot_NK.sum(0)
    sums_KD = onehot_NK.T @ latents_ND.astype(jnp.float32)
    means_KD = sums_KD / jnp.maximum(counts_K, 1.0)[:, None]
    moved = decay * codebook_KD + (1.0 - decay) * means_KD.astype(codebook_KD.dtype)
    return jnp.where((counts_K > 0)[:, None], moved, codebook_KD)
