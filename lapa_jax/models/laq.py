"""The latent action quantization model (LAPA stage 1).

Encoder: both frames share a patch embedding (LayerNorm, Linear, LayerNorm) and learned
spatial and temporal position embeddings; spatial blocks attend within each frame,
temporal blocks attend causally over the two time steps of each patch. Each frame's
tokens are projected to `latent_dim`, reshaped to the patch grid and reduced by a
small conv stack to `num_latent_tokens` vectors; the latent action is the difference
e(x_{t+H}) - e(x_t), quantized by NSVQ (or FSQ).

Decoder: queries are the patch embeddings of x_t; blocks of self-attention,
cross-attention to the quantized latent tokens and an MLP; a linear map back to
pixels. With `residual_decoder` it predicts x_t plus a correction whose output layer
starts at zero, so training starts at "copy x_t" and can only lower the loss by
reading the latent (see ../shared/README.md on collapse). With `flow_decoder` it also
decodes a per-pixel flow and warps x_t with it before adding the correction; with
`motion_parts` that flow is a few affine part motions, linear in the latent, on masks
segmented from x_t.

The defaults of LAQConfig are the paper's model; the other switches are the issue-8
levers, measured in results/laq_ablation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapa_jax.models import quantizers
from lapa_jax.models.layers import Block, DenseGeneral, LayerNorm, strict_from_dict


@dataclasses.dataclass(frozen=True)
class LAQConfig:
    image_size: int = 64
    patch_size: int = 8
    channels: int = 3
    width: int = 256
    spatial_depth: int = 4
    temporal_depth: int = 4
    decoder_depth: int = 4
    num_heads: int = 4
    head_dim: int = 64
    mlp_ratio: float = 4.0
    gated_mlp: bool = False
    qk_norm: bool = False
    latent_dim: int = 32
    num_latent_tokens: int = 4
    quantizer: str = "nsvq"  # "fsq"; "rvq": one latent, residual NSVQ in L stages
    codebook_size: int = 8
    codebook_init_scale: float = 1.0
    fsq_levels: tuple[int, ...] = (2, 2, 2)
    fsq_pre_norm: bool = True
    residual_decoder: bool = False
    flow_decoder: bool = False  # predict x_{t+H} by warping x_t with a decoded flow field
    # > 0 (with flow_decoder): the flow is `motion_parts` affine motions, linear in the
    # latent, each on a soft mask segmented from x_t alone (see PartMotion).
    motion_parts: int = 0
    motion_only: bool = False  # the latent reaches the decoder only through the part motions
    # Issue-8 levers; the defaults are the paper's behaviour (see experiments/laq.py).
    latent_pool: str = "conv"  # "conv": per-frame conv reduction; "attention": see LatentPool
    latent_norm: bool = False  # NSVQ on the unit sphere (cosine distance)
    encoder_spatial_pos: bool = True  # False: the encoder cannot tell where a change is
    decoder_latent_add: bool = False  # also add the whole latent to every decoder token
    decoder_mask_ratio: float = 0.0  # training: hide this fraction of x_t patches
    # > 0: a linear head predicts the frame difference, average-pooled to this side, from
    # the quantized latent alone (loss.diff_weight trains it); see LAQ.__call__.
    diff_head_size: int = 0
    dtype: str = "float32"  # compute dtype; parameters stay float32

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        side = math.isqrt(self.num_latent_tokens)
        if self.num_latent_tokens < 1:
            raise ValueError(f"num_latent_tokens must be >= 1, got {self.num_latent_tokens}")
        if self.latent_pool == "conv" and side * side != self.num_latent_tokens:
            raise ValueError(
                f"num_latent_tokens must be a square number with conv pooling, got {self.num_latent_tokens}"
            )
        if self.latent_pool == "conv" and self.grid % side:
            raise ValueError(
                f"the {self.grid}x{self.grid} patch grid cannot be reduced to {side}x{side} latent tokens"
            )
        if self.quantizer not in ("nsvq", "fsq", "rvq"):
            raise ValueError(f"quantizer must be 'nsvq', 'fsq' or 'rvq', got {self.quantizer!r}")
        if self.latent_pool not in ("conv", "attention"):
            raise ValueError(f"latent_pool must be 'conv' or 'attention', got {self.latent_pool!r}")
        if not 0.0 <= self.decoder_mask_ratio < 1.0:
            raise ValueError(f"decoder_mask_ratio must be in [0, 1), got {self.decoder_mask_ratio}")
        if self.diff_head_size < 0 or (
            self.diff_head_size and self.image_size % self.diff_head_size
        ):
            raise ValueError(
                f"diff_head_size must be 0 or divide image_size {self.image_size}, "
                f"got {self.diff_head_size}"
            )
        if self.motion_parts < 0:
            raise ValueError(f"motion_parts must be >= 0, got {self.motion_parts}")
        if self.motion_parts and not self.flow_decoder:
            raise ValueError("motion_parts > 0 needs flow_decoder=True (it replaces its flow)")
        if self.motion_only and not self.motion_parts:
            raise ValueError("motion_only needs motion_parts > 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        for name in (
            "width",
            "spatial_depth",
            "num_heads",
            "head_dim",
            "latent_dim",
            "codebook_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def pooled_tokens(self) -> int:
        """Vectors the encoder emits: one per latent token, or one in all for "rvq"."""
        return 1 if self.quantizer == "rvq" else self.num_latent_tokens

    @property
    def num_codes(self) -> int:
        return quantizers.codebook_size(self.quantizer, self.codebook_size, self.fsq_levels)

    @property
    def jnp_dtype(self) -> Any:
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LAQConfig:
        d = dict(d)
        if "fsq_levels" in d:
            d["fsq_levels"] = tuple(d["fsq_levels"])
        return strict_from_dict(cls, d, "LAQ model")


def patchify(images_NHWC: jax.Array, patch: int) -> jax.Array:
    n, h, w, c = images_NHWC.shape
    x = images_NHWC.reshape(n, h // patch, patch, w // patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches_NPF: jax.Array, patch: int, grid: int, channels: int) -> jax.Array:
    n = patches_NPF.shape[0]
    x = patches_NPF.reshape(n, grid, grid, patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, grid * patch, grid * patch, channels)


class PatchEmbed(nn.Module):
    width: int
    patch: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images_NHWC: jax.Array) -> jax.Array:
        x = patchify(images_NHWC.astype(self.dtype), self.patch)
        x = LayerNorm(axis_name="patch", dtype=self.dtype, name="ln_in")(x)
        x = DenseGeneral(self.width, ("patch", "embed"), dtype=self.dtype, name="proj")(x)
        return LayerNorm(dtype=self.dtype, name="ln_out")(x)


def _pos_embedding(module: nn.Module, name: str, shape: tuple[int, ...]) -> jax.Array:
    return module.param(
        name,
        nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None,) * (len(shape) - 1) + ("embed",)
        ),
        shape,
        jnp.float32,
    )


def _block(cfg: LAQConfig, name: str, causal: bool = False, cross: bool = False) -> Block:
    return Block(
        cfg.num_heads,
        cfg.head_dim,
        int(cfg.width * cfg.mlp_ratio),
        cfg.jnp_dtype,
        causal,
        cross,
        cfg.qk_norm,
        cfg.gated_mlp,
        name=name,
    )


class Encoder(nn.Module):
    """frames [B, T=2, H, W, C] -> the continuous latent action [B, L, latent_dim].

    "conv" pooling (the paper's): each frame's tokens are reduced to L vectors by a conv
    stack over the patch grid and the latent is e(x_{t+H}) - e(x_t), so latent position p
    describes image region p. "attention" pooling takes the difference per patch first
    and lets L learned queries attend over it, so a latent token can describe a motion
    wherever in the image it happens.
    """

    cfg: LAQConfig

    @nn.compact
    def __call__(self, frames_BTHWC: jax.Array) -> jax.Array:
        cfg = self.cfg
        dt = cfg.jnp_dtype
        b, t = frames_BTHWC.shape[:2]
        n = cfg.grid * cfg.grid
        x = PatchEmbed(cfg.width, cfg.patch_size, dt, name="patch_embed")(
            frames_BTHWC.reshape(b * t, *frames_BTHWC.shape[2:])
        )
        if cfg.encoder_spatial_pos:
            x = x + _pos_embedding(self, "pos_spatial", (n, cfg.width)).astype(dt)
        x = x.reshape(b, t, n, cfg.width) + _pos_embedding(
            self, "pos_temporal", (t, 1, cfg.width)
        ).astype(dt)
        block = lambda causal, name: _block(cfg, name, causal=causal)  # noqa: E731
        x = x.reshape(b * t, n, cfg.width)
        for i in range(cfg.spatial_depth):
            x = block(False, f"spatial_{i}")(x)
        x = x.reshape(b, t, n, cfg.width).transpose(0, 2, 1, 3).reshape(b * n, t, cfg.width)
        for i in range(cfg.temporal_depth):
            x = block(True, f"temporal_{i}")(x)
        x = x.reshape(b, n, t, cfg.width).transpose(0, 2, 1, 3).reshape(b * t, n, cfg.width)
        x = LayerNorm(dtype=dt, name="ln_final")(x)
        if cfg.latent_pool == "attention":
            return LatentPool(cfg, name="latent_pool")(x.reshape(b, t, n, cfg.width))
        z = DenseGeneral(cfg.latent_dim, ("embed", "latent"), dtype=dt, name="to_latent")(x)
        z = z.reshape(b * t, cfg.grid, cfg.grid, cfg.latent_dim)
        side = math.isqrt(cfg.num_latent_tokens)
        factor = cfg.grid // side
        z = nn.gelu(nn.Conv(cfg.latent_dim, (3, 3), padding="SAME", dtype=dt, name="conv_mix")(z))
        z = nn.Conv(
            cfg.latent_dim,
            (factor, factor),
            strides=(factor, factor),
            padding="VALID",
            dtype=dt,
            name="conv_reduce",
        )(z)
        z_BTLD = z.reshape(b, t, cfg.num_latent_tokens, cfg.latent_dim).astype(jnp.float32)
        delta_BLD = z_BTLD[:, -1] - z_BTLD[:, 0]
        if cfg.pooled_tokens == 1 and cfg.num_latent_tokens > 1:
            flat = delta_BLD.reshape(b, 1, -1)
            delta_BLD = DenseGeneral(cfg.latent_dim, (None, "latent"), name="merge")(flat)
        return delta_BLD


class LatentPool(nn.Module):
    """Per-patch feature difference [B, 2, N, W] -> L latent tokens [B, L, latent_dim]."""

    cfg: LAQConfig

    @nn.compact
    def __call__(self, feats_BTNW: jax.Array) -> jax.Array:
        cfg = self.cfg
        dt = cfg.jnp_dtype
        diff_BNW = feats_BTNW[:, -1] - feats_BTNW[:, 0]
        diff_BNW = LayerNorm(dtype=dt, name="ln_diff")(diff_BNW)
        queries = _pos_embedding(self, "queries", (cfg.pooled_tokens, cfg.width)).astype(dt)
        q_BLW = jnp.broadcast_to(queries, (diff_BNW.shape[0], *queries.shape))
        q_BLW = _block(cfg, "pool_block", cross=True)(q_BLW, diff_BNW)
        q_BLW = LayerNorm(dtype=dt, name="ln_out")(q_BLW)
        z = DenseGeneral(cfg.latent_dim, ("embed", "latent"), dtype=dt, name="to_latent")(q_BLW)
        return z.astype(jnp.float32)


class PartMotion(nn.Module):
    """(x_t, latent) -> flow [B, H, W, 2] as J moving parts: where each part is comes from
    x_t alone, how it moves (an affine motion) is linear in the latent. The latent can then
    only say how things move, in a few numbers, not where they are. Meant to make its
    largest directions the robot's motion; at 1,200 steps it did not (results/laq_ablation)."""

    cfg: LAQConfig

    @nn.compact
    def __call__(self, first_BHWC: jax.Array, latents_BLD: jax.Array) -> jax.Array:
        cfg = self.cfg
        dt = cfg.jnp_dtype
        m = PatchEmbed(cfg.width, cfg.patch_size, dt, name="embed")(first_BHWC)
        m = m + _pos_embedding(self, "pos", (cfg.grid * cfg.grid, cfg.width)).astype(dt)
        m = LayerNorm(dtype=dt, name="ln")(_block(cfg, "block")(m))
        parts = cfg.motion_parts + 1  # the last one stays still
        logits = DenseGeneral(
            cfg.patch_size * cfg.patch_size * parts, ("embed", "patch"), dtype=dt, name="to_parts"
        )(m)
        masks_BHWJ = jax.nn.softmax(
            unpatchify(logits.astype(jnp.float32), cfg.patch_size, cfg.grid, parts), axis=-1
        )[..., :-1]
        flat_BF = latents_BLD.reshape(latents_BLD.shape[0], -1).astype(jnp.float32)
        motion = nn.Dense(
            cfg.motion_parts * 6, kernel_init=nn.initializers.zeros, name="to_motion"
        )(flat_BF)
        return affine_part_flow(masks_BHWJ, motion.reshape(-1, cfg.motion_parts, 6))


class Decoder(nn.Module):
    """(x_t [B, H, W, C], latent tokens [B, L, latent_dim]) -> predicted x_{t+H}."""

    cfg: LAQConfig

    @nn.compact
    def __call__(
        self, first_BHWC: jax.Array, latents_BLD: jax.Array, train: bool = False
    ) -> jax.Array:
        cfg = self.cfg
        dt = cfg.jnp_dtype
        n = cfg.grid * cfg.grid
        x = PatchEmbed(cfg.width, cfg.patch_size, dt, name="patch_embed")(first_BHWC)
        if cfg.decoder_mask_ratio > 0:
            # A decoder that cannot see every x_t patch cannot get the frame for free.
            mask_token = self.param(
                "mask_token",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                (cfg.width,),
                jnp.float32,
            )
            if train:
                hide_BN = jax.random.bernoulli(
                    self.make_rng("noise"), cfg.decoder_mask_ratio, x.shape[:2]
                )
                x = jnp.where(hide_BN[..., None], mask_token.astype(dt), x)
        x = x + _pos_embedding(self, "pos_spatial", (n, cfg.width)).astype(dt)
        # motion_only: the pixel correction still sees x_t, but what the latent says can
        # only act through how the parts move.
        seen_BLD = jnp.zeros_like(latents_BLD) if cfg.motion_only else latents_BLD
        ctx = DenseGeneral(cfg.width, ("latent", "embed"), dtype=dt, name="latent_in")(seen_BLD)
        ctx = ctx + _pos_embedding(self, "pos_latent", (cfg.num_latent_tokens, cfg.width)).astype(
            dt
        )
        if cfg.decoder_latent_add:
            # Every query token gets the whole action, not only what cross-attention fetches.
            flat = latents_BLD.reshape(latents_BLD.shape[0], -1).astype(dt)
            add_BW = DenseGeneral(cfg.width, ("latent", "embed"), dtype=dt, name="latent_add")(flat)
            x = x + LayerNorm(dtype=dt, name="ln_latent_add")(add_BW)[:, None, :]
        for i in range(cfg.decoder_depth):
            x = _block(cfg, f"block_{i}", cross=True)(x, ctx)
        x = LayerNorm(dtype=dt, name="ln_final")(x)
        pixels = cfg.patch_size * cfg.patch_size * cfg.channels
        starts_at_copy = cfg.residual_decoder or cfg.flow_decoder
        init = nn.initializers.zeros if starts_at_copy else nn.initializers.lecun_normal()
        out = DenseGeneral(
            pixels, ("embed", "patch"), dtype=dt, kernel_init=init, name="to_pixels"
        )(x)
        out = unpatchify(out.astype(jnp.float32), cfg.patch_size, cfg.grid, cfg.channels)
        base = first_BHWC.astype(jnp.float32)
        if cfg.motion_parts:
            base = warp(base, PartMotion(cfg, name="parts")(first_BHWC, latents_BLD))
        elif cfg.flow_decoder:
            # Rigid motion of a few pixels is one flow vector per pixel here, where a pixel
            # decoder has to redraw every edge that moved.
            flow = DenseGeneral(
                cfg.patch_size * cfg.patch_size * 2,
                ("embed", "patch"),
                dtype=dt,
                kernel_init=nn.initializers.zeros,
                name="to_flow",
            )(x)
            flow_BHW2 = unpatchify(flow.astype(jnp.float32), cfg.patch_size, cfg.grid, 2)
            base = warp(base, flow_BHW2)
        if starts_at_copy:
            out = base + out
        return out


def affine_part_flow(masks_BHWJ: jax.Array, motion_BJ6: jax.Array) -> jax.Array:
    """Flow [B, H, W, 2] (in pixels, (dy, dx)) = sum_j mask_j * (t_j + A_j p), with p the
    pixel position relative to the image centre in half-image units; motion_j holds
    (t_y, t_x, A_yy, A_yx, A_xy, A_xx)."""
    _, h, w, _ = masks_BHWJ.shape
    ys, xs = jnp.meshgrid(
        (jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2) / (h / 2),
        (jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2) / (w / 2),
        indexing="ij",
    )
    t_BJ2 = motion_BJ6[..., :2]
    a_BJ22 = motion_BJ6[..., 2:].reshape(*motion_BJ6.shape[:2], 2, 2)
    p_HW2 = jnp.stack([ys, xs], -1)
    flow_BHWJ2 = t_BJ2[:, None, None] + jnp.einsum("bjkl,hwl->bhwjk", a_BJ22, p_HW2)
    return (masks_BHWJ[..., None] * flow_BHWJ2).sum(-2)


def warp(images_BHWC: jax.Array, flow_BHW2: jax.Array) -> jax.Array:
    """Backward bilinear warp: out[y, x] = image[y + flow_y, x + flow_x] (edges clamped)."""
    b, h, w, c = images_BHWC.shape
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    y = jnp.clip(ys[None] + flow_BHW2[..., 0], 0, h - 1)
    x = jnp.clip(xs[None] + flow_BHW2[..., 1], 0, w - 1)
    y0, x0 = jnp.floor(y), jnp.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    y0i, x0i = y0.astype(jnp.int32), x0.astype(jnp.int32)
    y1i, x1i = jnp.minimum(y0i + 1, h - 1), jnp.minimum(x0i + 1, w - 1)
    flat = images_BHWC.reshape(b, h * w, c)

    def gather(yi: jax.Array, xi: jax.Array) -> jax.Array:
        idx = (yi * w + xi).reshape(b, h * w, 1)
        return jnp.take_along_axis(flat, idx, axis=1).reshape(b, h, w, c)

    top = gather(y0i, x0i) * (1 - wx) + gather(y0i, x1i) * wx
    bottom = gather(y1i, x0i) * (1 - wx) + gather(y1i, x1i) * wx
    return top * (1 - wy) + bottom * wy


class LAQ(nn.Module):
    cfg: LAQConfig

    def setup(self) -> None:
        cfg = self.cfg
        self.encoder = Encoder(cfg)
        if cfg.quantizer == "nsvq":
            self.quantizer = quantizers.NSVQ(
                cfg.codebook_size, cfg.latent_dim, cfg.codebook_init_scale, cfg.latent_norm
            )
        elif cfg.quantizer == "rvq":
            self.quantizer = quantizers.ResidualNSVQ(
                cfg.codebook_size,
                cfg.latent_dim,
                cfg.num_latent_tokens,
                cfg.codebook_init_scale,
                cfg.latent_norm,
            )
        else:
            self.quantizer = quantizers.FSQ(tuple(cfg.fsq_levels), cfg.latent_dim, cfg.fsq_pre_norm)
        self.decoder = Decoder(cfg)
        if cfg.diff_head_size:
            side = cfg.diff_head_size
            self.diff_head = nn.Dense(side * side * cfg.channels, name="diff_head")

    def latent_difference(self, frames_BTHWC: jax.Array) -> jax.Array:
        """The continuous latent action [B, L, latent_dim] (a difference of frame features)."""
        return self.encoder(frames_BTHWC)

    def __call__(
        self,
        frames_BTHWC: jax.Array,
        train: bool = False,
        decode_first_BHWC: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """`decode_first_BHWC`: the x_t the decoder starts from, when it is not the pair's
        own (the cross-view lever decodes another view of the same pair)."""
        delta_BLD = self.latent_difference(frames_BTHWC)
        q = self.quantizer(delta_BLD, train)
        first_BHWC = frames_BTHWC[:, 0] if decode_first_BHWC is None else decode_first_BHWC
        recon_BHWC = self.decoder(first_BHWC, q.quantized, train)
        out = {}
        if self.cfg.diff_head_size:
            # Linear, and without x_t: the frame difference must be readable from the
            # codes alone, and linearly, as the probe of the action reads it.
            side, b = self.cfg.diff_head_size, delta_BLD.shape[0]
            flat_BF = q.quantized.reshape(b, -1).astype(jnp.float32)
            out["diff"] = self.diff_head(flat_BF).reshape(b, side, side, self.cfg.channels)
        return {
            **out,
            "recon": recon_BHWC,
            "codes": q.codes,
            "delta": delta_BLD,
            "quantized": q.quantized,
            "hard": q.hard,
            "logits": q.logits,
            "quantizer_inputs": q.inputs,
        }

    def encode(self, frames_BTHWC: jax.Array) -> jax.Array:
        """Frame pairs -> latent action codes [B, L] int32 (hard, inference)."""
        return self.quantizer(self.latent_difference(frames_BTHWC), False).codes

    def decode(self, first_BHWC: jax.Array, codes_BL: jax.Array) -> jax.Array:
        """x_t and latent action codes -> predicted x_{t+H}."""
        return self.decoder(first_BHWC, self.quantizer.lookup(codes_BL))
