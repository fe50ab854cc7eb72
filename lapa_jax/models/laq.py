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
reading the latent (see ../shared/README.md on collapse).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapa_jax.models import quantizers
from lapa_jax.models.layers import Block, DenseGeneral, LayerNorm


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
    quantizer: str = "nsvq"  # or "fsq"
    codebook_size: int = 8
    codebook_init_scale: float = 1.0
    fsq_levels: tuple[int, ...] = (2, 2, 2)
    fsq_pre_norm: bool = True
    residual_decoder: bool = False
    dtype: str = "float32"  # compute dtype; parameters stay float32

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        side = math.isqrt(self.num_latent_tokens)
        if side * side != self.num_latent_tokens:
            raise ValueError(
                f"num_latent_tokens must be a square number, got {self.num_latent_tokens}"
            )
        if self.grid % side:
            raise ValueError(
                f"the {self.grid}x{self.grid} patch grid cannot be reduced to {side}x{side} latent tokens"
            )
        if self.quantizer not in ("nsvq", "fsq"):
            raise ValueError(f"quantizer must be 'nsvq' or 'fsq', got {self.quantizer!r}")
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
    def num_codes(self) -> int:
        return quantizers.codebook_size(self.quantizer, self.codebook_size, self.fsq_levels)

    @property
    def jnp_dtype(self) -> Any:
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LAQConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown LAQ model config fields {unknown}")
        d = dict(d)
        if "fsq_levels" in d:
            d["fsq_levels"] = tuple(d["fsq_levels"])
        return cls(**d)


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


class Encoder(nn.Module):
    """frames [B, T, H, W, C] -> per-frame latent vectors [B, T, L, latent_dim]."""

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
        x = x + _pos_embedding(self, "pos_spatial", (n, cfg.width)).astype(dt)
        x = x.reshape(b, t, n, cfg.width) + _pos_embedding(
            self, "pos_temporal", (t, 1, cfg.width)
        ).astype(dt)
        block = lambda causal, name: Block(  # noqa: E731
            cfg.num_heads,
            cfg.head_dim,
            int(cfg.width * cfg.mlp_ratio),
            dt,
            causal,
            False,
            cfg.qk_norm,
            cfg.gated_mlp,
            name=name,
        )
        x = x.reshape(b * t, n, cfg.width)
        for i in range(cfg.spatial_depth):
            x = block(False, f"spatial_{i}")(x)
        x = x.reshape(b, t, n, cfg.width).transpose(0, 2, 1, 3).reshape(b * n, t, cfg.width)
        for i in range(cfg.temporal_depth):
            x = block(True, f"temporal_{i}")(x)
        x = x.reshape(b, n, t, cfg.width).transpose(0, 2, 1, 3).reshape(b * t, n, cfg.width)
        x = LayerNorm(dtype=dt, name="ln_final")(x)
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
        return z.reshape(b, t, cfg.num_latent_tokens, cfg.latent_dim).astype(jnp.float32)


class Decoder(nn.Module):
    """(x_t [B, H, W, C], latent tokens [B, L, latent_dim]) -> predicted x_{t+H}."""

    cfg: LAQConfig

    @nn.compact
    def __call__(self, first_BHWC: jax.Array, latents_BLD: jax.Array) -> jax.Array:
        cfg = self.cfg
        dt = cfg.jnp_dtype
        n = cfg.grid * cfg.grid
        x = PatchEmbed(cfg.width, cfg.patch_size, dt, name="patch_embed")(first_BHWC)
        x = x + _pos_embedding(self, "pos_spatial", (n, cfg.width)).astype(dt)
        ctx = DenseGeneral(cfg.width, ("latent", "embed"), dtype=dt, name="latent_in")(latents_BLD)
        ctx = ctx + _pos_embedding(self, "pos_latent", (cfg.num_latent_tokens, cfg.width)).astype(
            dt
        )
        for i in range(cfg.decoder_depth):
            x = Block(
                cfg.num_heads,
                cfg.head_dim,
                int(cfg.width * cfg.mlp_ratio),
                dt,
                False,
                True,
                cfg.qk_norm,
                cfg.gated_mlp,
                name=f"block_{i}",
            )(x, ctx)
        x = LayerNorm(dtype=dt, name="ln_final")(x)
        pixels = cfg.patch_size * cfg.patch_size * cfg.channels
        init = nn.initializers.zeros if cfg.residual_decoder else nn.initializers.lecun_normal()
        out = DenseGeneral(
            pixels, ("embed", "patch"), dtype=dt, kernel_init=init, name="to_pixels"
        )(x)
        out = unpatchify(out.astype(jnp.float32), cfg.patch_size, cfg.grid, cfg.channels)
        if cfg.residual_decoder:
            out = first_BHWC.astype(jnp.float32) + out
        return out


class LAQ(nn.Module):
    cfg: LAQConfig

    def setup(self) -> None:
        cfg = self.cfg
        self.encoder = Encoder(cfg)
        if cfg.quantizer == "nsvq":
            self.quantizer = quantizers.NSVQ(
                cfg.codebook_size, cfg.latent_dim, cfg.codebook_init_scale
            )
        else:
            self.quantizer = quantizers.FSQ(tuple(cfg.fsq_levels), cfg.latent_dim, cfg.fsq_pre_norm)
        self.decoder = Decoder(cfg)

    def latent_difference(self, frames_BTHWC: jax.Array) -> jax.Array:
        """The continuous latent action d = e(x_{t+H}) - e(x_t), [B, L, latent_dim]."""
        e_BTLD = self.encoder(frames_BTHWC)
        return e_BTLD[:, 1] - e_BTLD[:, 0]

    def __call__(self, frames_BTHWC: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        delta_BLD = self.latent_difference(frames_BTHWC)
        q = self.quantizer(delta_BLD, train)
        recon_BHWC = self.decoder(frames_BTHWC[:, 0], q.quantized)
        return {
            "recon": recon_BHWC,
            "codes": q.codes,
            "delta": delta_BLD,
            "quantized": q.quantized,
            "hard": q.hard,
        }

    def encode(self, frames_BTHWC: jax.Array) -> jax.Array:
        """Frame pairs -> latent action codes [B, L] int32 (hard, inference)."""
        return self.quantizer(self.latent_difference(frames_BTHWC), False).codes

    def decode(self, first_BHWC: jax.Array, codes_BL: jax.Array) -> jax.Array:
        """x_t and latent action codes -> predicted x_{t+H}."""
        return self.decoder(first_BHWC, self.quantizer.lookup(codes_BL))
