"""The vision-language model of stages 2 and 3.

A ViT encodes the current image into patch tokens, projected to the language model's
width. A decoder-only language model (RMSNorm, rotary positions, gated-GELU MLP,
grouped-query attention) reads [image tokens, prompt tokens, latent tokens]. Image and
prompt form a prefix that attends to itself fully; the latent tokens attend to the
prefix and causally to each other. As in the paper, latent tokens have their own input
embeddings and their own heads (one per position, `latent_codes` classes each), not
rows of the text vocabulary; per-position tables matter when position k's code k means
something else at another position (residual quantizers).

Every parameter carries logical axis names (see lapa_jax.sharding.DEFAULT_RULES);
`scan_layers` stacks the blocks under one `nn.scan` (axis "layers") and `remat`
recomputes each block's activations in the backward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapa_jax.models.laq import patchify
from lapa_jax.models.layers import DenseGeneral, LayerNorm, strict_from_dict


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    image_size: int = 64
    patch_size: int = 8
    channels: int = 3
    vit_width: int = 128
    vit_depth: int = 2
    vit_heads: int = 4
    vit_mlp: int = 512
    width: int = 256
    depth: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    mlp: int = 1024
    vocab_size: int = 512
    max_text_len: int = 24
    num_latent_tokens: int = 4
    latent_codes: int = 8
    # > 0: a continuous head instead of the token head. The num_latent_tokens positions
    # become learned queries (one per future step of an action chunk), each read out
    # to action_dim values in one pass (no autoregression, no latent_codes).
    action_dim: int = 0
    # > 0: low-rank adapters on every projection of the language model (attention and
    # MLP), scaled by lora_alpha / lora_rank; train them alone with the base frozen.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    rope_base: float = 10_000.0
    freeze_vision: bool = False
    scan_layers: bool = False
    remat: bool = False
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        for name in (
            "vit_width",
            "vit_depth",
            "vit_heads",
            "vit_mlp",
            "width",
            "depth",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "mlp",
            "vocab_size",
            "max_text_len",
            "num_latent_tokens",
            "latent_codes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.vit_width % self.vit_heads:
            raise ValueError(
                f"vit_width {self.vit_width} must divide by vit_heads {self.vit_heads}"
            )
        if self.lora_rank < 0:
            raise ValueError(f"model.lora_rank must be >= 0, got {self.lora_rank}")
        if self.action_dim < 0:
            raise ValueError(f"model.action_dim must be >= 0, got {self.action_dim}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary positions, got {self.head_dim}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def seq_len(self) -> int:
        return self.num_patches + self.max_text_len + self.num_latent_tokens

    @property
    def jnp_dtype(self) -> Any:
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VLMConfig:
        return strict_from_dict(cls, d, "VLM")


class RMSNorm(nn.Module):
    """x / rms(x) * (1 + scale): the scale starts at zero, as in Gemma."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            (x.shape[-1],),
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6)
        return (y * (1.0 + scale)).astype(self.dtype)


def rotary(x_BTHD: jax.Array, positions_BT: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding (half-split layout) at integer positions."""
    half = x_BTHD.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions_BT[..., None].astype(jnp.float32) * freq  # [B, T, half]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
    x1, x2 = jnp.split(x_BTHD.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTHD.dtype)


class Attention(nn.Module):
    """Grouped-query attention with an explicit [B, Q, K] mask; optional rotary positions
    (the language model) and biases (the ViT)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: Any = jnp.float32
    use_bias: bool = False
    rope_base: float | None = None
    lora_rank: int = 0
    lora_scale: float = 1.0

    @nn.compact
    def __call__(
        self, x_BTE: jax.Array, mask_BQK: jax.Array | None, positions_BT: jax.Array | None
    ) -> jax.Array:
        lora = dict(lora_rank=self.lora_rank, lora_scale=self.lora_scale)
        dense = lambda heads, axes, name: DenseGeneral(  # noqa: E731
            (heads, self.head_dim),
            axes,
            use_bias=self.use_bias,
            dtype=self.dtype,
            name=name,
            **lora,
        )
        q = dense(self.num_heads, ("embed", "heads", "kv"), "query")(x_BTE)
        k = dense(self.num_kv_heads, ("embed", "kv_heads", "kv"), "key")(x_BTE)
        v = dense(self.num_kv_heads, ("embed", "kv_heads", "kv"), "value")(x_BTE)
        if self.rope_base is not None:
            assert positions_BT is not None
            q = rotary(q, positions_BT, self.rope_base)
            k = rotary(k, positions_BT, self.rope_base)
        b, t = q.shape[:2]
        groups = self.num_heads // self.num_kv_heads
        q = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)
        q = q * jnp.asarray(self.head_dim**-0.5, self.dtype)
        logits = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32)
        if mask_BQK is not None:
            logits = jnp.where(mask_BQK[:, None, None], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, self.num_heads, self.head_dim)
        return DenseGeneral(
            x_BTE.shape[-1],
            ("heads", "kv", "embed"),
            in_axes=(-2, -1),
            use_bias=self.use_bias,
            dtype=self.dtype,
            name="out",
            **lora,
        )(out)


class ViTBlock(nn.Module):
    cfg: VLMConfig

    @nn.compact
    def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
        c, dt = self.cfg, self.cfg.jnp_dtype
        h = LayerNorm(dtype=dt, name="ln_attn")(x)
        x = x + Attention(
            c.vit_heads, c.vit_heads, c.vit_width // c.vit_heads, dt, use_bias=True, name="attn"
        )(h, None, None)
        h = LayerNorm(dtype=dt, name="ln_mlp")(x)
        h = nn.gelu(DenseGeneral(c.vit_mlp, ("embed", "mlp"), dtype=dt, name="mlp_in")(h))
        x = x + DenseGeneral(c.vit_width, ("mlp", "embed"), dtype=dt, name="mlp_out")(h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


class LMBlock(nn.Module):
    cfg: VLMConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, mask_positions: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, None]:
        c, dt = self.cfg, self.cfg.jnp_dtype
        mask, positions = mask_positions
        lora = dict(lora_rank=c.lora_rank, lora_scale=c.lora_alpha / max(c.lora_rank, 1))
        h = RMSNorm(dt, name="pre_attn_norm")(x)
        x = x + Attention(
            c.num_heads, c.num_kv_heads, c.head_dim, dt, rope_base=c.rope_base, name="attn", **lora
        )(h, mask, positions)
        h = RMSNorm(dt, name="pre_mlp_norm")(x)
        dense = lambda n, axes, name: DenseGeneral(  # noqa: E731
            n, axes, use_bias=False, dtype=dt, name=name, **lora
        )
        gate = dense(c.mlp, ("embed", "mlp"), "gate")(h)
        up = dense(c.mlp, ("embed", "mlp"), "up")(h)
        x = x + dense(c.width, ("mlp", "embed"), "down")(nn.gelu(gate) * up)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


def _stack(cfg: VLMConfig, block: type[nn.Module], depth: int, name: str) -> nn.Module:
    """`depth` blocks, scanned (parameters stacked on a "layers" axis) or unrolled."""
    cls = nn.remat(block, prevent_cse=not cfg.scan_layers) if cfg.remat else block
    if cfg.scan_layers:
        return nn.scan(
            cls,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=depth,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, name=name)
    return _Unrolled(cfg, cls, depth, name=name)


class _Unrolled(nn.Module):
    cfg: VLMConfig
    block: Any
    depth: int

    @nn.compact
    def __call__(self, x: jax.Array, extra: Any) -> tuple[jax.Array, None]:
        for i in range(self.depth):
            x, _ = self.block(self.cfg, name=f"layer_{i}")(x, extra)
        return x, None


class VisionEncoder(nn.Module):
    """images [B, H, W, C] in [0, 1] -> tokens [B, N, width] (the LM's width)."""

    cfg: VLMConfig

    @nn.compact
    def __call__(self, images_BHWC: jax.Array) -> jax.Array:
        c, dt = self.cfg, self.cfg.jnp_dtype
        x = patchify(images_BHWC.astype(dt) * 2.0 - 1.0, c.patch_size)
        x = DenseGeneral(c.vit_width, ("patch", "embed"), dtype=dt, name="patch_embed")(x)
        pos = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (c.num_patches, c.vit_width),
            jnp.float32,
        )
        x = x + pos.astype(dt)
        x, _ = _stack(c, ViTBlock, c.vit_depth, "blocks")(x, None)
        x = LayerNorm(dtype=dt, name="encoder_norm")(x)
        return DenseGeneral(c.width, ("embed_vit", "embed"), dtype=dt, name="head")(x)


def prefix_lm_mask(key_valid_BS: jax.Array, prefix_len: int) -> jax.Array:
    """[B, S, S] bool: prefix queries see valid prefix keys; later queries see valid
    prefix keys and the non-prefix keys up to themselves."""
    s = key_valid_BS.shape[1]
    idx = jnp.arange(s)
    in_prefix = idx < prefix_len
    allowed = in_prefix[None, :] | (~in_prefix[:, None] & (idx[None, :] <= idx[:, None]))
    return allowed[None] & key_valid_BS[:, None, :]


class VLM(nn.Module):
    cfg: VLMConfig

    def setup(self) -> None:
        c = self.cfg
        self.vision = VisionEncoder(c)
        self.embedder = self.param(
            "embedder",
            nn.with_logical_partitioning(
                nn.initializers.normal(1.0 / math.sqrt(c.width)), ("vocab", "embed")
            ),
            (c.vocab_size, c.width),
            jnp.float32,
        )
        if c.action_dim:
            self.action_queries = self.param(
                "action_queries",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
                (c.num_latent_tokens, c.width),
                jnp.float32,
            )
            self.action_head = self.param(
                "action_head",
                nn.with_logical_partitioning(nn.initializers.zeros, (None, "embed", None)),
                (c.num_latent_tokens, c.width, c.action_dim),
                jnp.float32,
            )
            self.action_bias = self.param(
                "action_bias",
                nn.with_logical_partitioning(nn.initializers.zeros, (None, None)),
                (c.num_latent_tokens, c.action_dim),
                jnp.float32,
            )
        else:
            self.latent_begin = self.param(
                "latent_begin",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                (c.width,),
                jnp.float32,
            )
            self.latent_embed = self.param(
                "latent_embed",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
                (c.num_latent_tokens, c.latent_codes, c.width),
                jnp.float32,
            )
            self.latent_head = self.param(
                "latent_head",
                nn.with_logical_partitioning(nn.initializers.zeros, (None, "embed", None)),
                (c.num_latent_tokens, c.width, c.latent_codes),
                jnp.float32,
            )
        self.layers = _stack(c, LMBlock, c.depth, "layers")
        self.final_norm = RMSNorm(c.jnp_dtype)

    def _latent_inputs(self, codes_BL: jax.Array) -> jax.Array:
        """Input at latent position k: a begin vector for k = 0, else code k-1's embedding
        (the continuous head: query k, whatever the codes)."""
        b, n = codes_BL.shape[0], self.cfg.num_latent_tokens
        if self.cfg.action_dim:
            return jnp.broadcast_to(self.action_queries, (b, n, self.cfg.width))
        prev = self.latent_embed[jnp.arange(n - 1)[None, :], codes_BL[:, : n - 1]]  # [B, n-1, W]
        begin = jnp.broadcast_to(self.latent_begin, (b, 1, self.cfg.width))
        return jnp.concatenate([begin, prev], axis=1)

    def hidden(
        self,
        images_BHWC: jax.Array,
        text_BT: jax.Array,
        text_mask_BT: jax.Array,
        codes_BL: jax.Array,
    ) -> jax.Array:
        """The final hidden states of the whole sequence [B, S, width]."""
        c, dt = self.cfg, self.cfg.jnp_dtype
        img = self.vision(images_BHWC)
        if c.freeze_vision:
            img = jax.lax.stop_gradient(img)
        txt = jnp.take(self.embedder, text_BT, axis=0) * math.sqrt(c.width)
        lat = self._latent_inputs(codes_BL)
        x = jnp.concatenate([img.astype(dt), txt.astype(dt), lat.astype(dt)], axis=1)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        b = x.shape[0]
        valid = jnp.concatenate(
            [
                jnp.ones((b, c.num_patches), bool),
                text_mask_BT.astype(bool),
                jnp.ones((b, c.num_latent_tokens), bool),
            ],
            axis=1,
        )
        mask = prefix_lm_mask(valid, c.num_patches + c.max_text_len)
        positions = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
        x, _ = self.layers(x, (mask, positions))
        return self.final_norm(x)

    def __call__(
        self,
        images_BHWC: jax.Array,
        text_BT: jax.Array,
        text_mask_BT: jax.Array,
        codes_BL: jax.Array,
        with_text_logits: bool = False,
    ) -> dict[str, jax.Array]:
        """Teacher-forced logits of the latent codes [B, L, latent_codes] (position k
        sees codes < k), and optionally next-token logits of the prompt [B, T, vocab].
        The continuous head gives "actions" [B, L, action_dim] instead (codes unused)."""
        c = self.cfg
        h = self.hidden(images_BHWC, text_BT, text_mask_BT, codes_BL)
        start = c.num_patches + c.max_text_len
        h_lat = h[:, start : start + c.num_latent_tokens].astype(jnp.float32)
        if c.action_dim:
            out = {
                "actions": jnp.einsum("blw,lwa->bla", h_lat, self.action_head) + self.action_bias
            }
        else:
            out = {"latent_logits": jnp.einsum("blw,lwc->blc", h_lat, self.latent_head)}
        if with_text_logits:
            h_txt = h[:, c.num_patches : start].astype(jnp.float32)
            out["text_logits"] = jnp.einsum("btw,vw->btv", h_txt, self.embedder)
        return out

    def decode(
        self,
        images_BHWC: jax.Array,
        text_BT: jax.Array,
        text_mask_BT: jax.Array,
        rng: jax.Array | None = None,
        temperature: float = 0.0,
    ) -> jax.Array:
        """The 4 latent codes [B, L], one position after another: greedy when
        temperature is 0, else sampled. Recomputes the sequence per position (no cache):
        cheap for L = 4 next to the prefix. The continuous head: its actions [B, L, A],
        in one pass."""
        c = self.cfg
        codes = jnp.zeros((images_BHWC.shape[0], c.num_latent_tokens), jnp.int32)
        if c.action_dim:
            return self(images_BHWC, text_BT, text_mask_BT, codes)["actions"]
        for k in range(c.num_latent_tokens):
            logits = self(images_BHWC, text_BT, text_mask_BT, codes)["latent_logits"][:, k]
            if temperature > 0:
                assert rng is not None, "sampling needs an rng"
                pick = jax.random.categorical(jax.random.fold_in(rng, k), logits / temperature)
            else:
                pick = jnp.argmax(logits, -1)
            codes = codes.at[:, k].set(pick.astype(jnp.int32))
        return codes
