"""Transformer building blocks shared by every model.

Parameters are declared with logical axis names ("embed", "mlp", "heads", "kv", ...);
`lapa_jax.sharding` maps those names onto mesh axes, so no model knows about meshes.
Compute runs in `dtype` (float32 or bfloat16) with float32 parameters.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def strict_from_dict(cls: Any, d: dict[str, Any], what: str) -> Any:
    """A config dataclass from a dict; unknown keys are an error, not silently dropped."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"unknown {what} config fields {unknown}")
    return cls(**d)


def dense_init(scale: float = 1.0) -> nn.initializers.Initializer:
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class DenseGeneral(nn.Module):
    """A Dense layer whose kernel carries logical axis names.

    lora_rank > 0 adds a low-rank adapter: y += scale * (x @ lora_a) @ lora_b, with
    lora_b zero-initialised so the layer starts as the base layer (Hu et al., 2021).
    """

    features: int | tuple[int, ...]
    axes: tuple[str | None, ...]
    in_axes: int | tuple[int, ...] = -1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = dense_init()
    lora_rank: int = 0
    lora_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        in_axes = (self.in_axes,) if isinstance(self.in_axes, int) else tuple(self.in_axes)
        in_axes = tuple(a % x.ndim for a in in_axes)
        in_shape = tuple(x.shape[a] for a in in_axes)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.axes),
            in_shape + features,
            jnp.float32,
        )
        contract = (in_axes, tuple(range(len(in_axes))))
        y = jax.lax.dot_general(
            x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ()))
        )
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.axes[len(in_axes) :]),
                features,
                jnp.float32,
            )
            y = y + bias.astype(self.dtype)
        if self.lora_rank:
            n_in = len(in_axes)
            a = self.param(
                "lora_a",
                nn.with_logical_partitioning(
                    nn.initializers.normal(1.0 / np.sqrt(np.prod(in_shape))),
                    (*self.axes[:n_in], None),
                ),
                (*in_shape, self.lora_rank),
                jnp.float32,
            )
            b = self.param(
                "lora_b",
                nn.with_logical_partitioning(nn.initializers.zeros, (None, *self.axes[n_in:])),
                (self.lora_rank, *features),
                jnp.float32,
            )
            h = jax.lax.dot_general(
                x.astype(self.dtype), a.astype(self.dtype), (contract, ((), ()))
            )
            y = y + self.lora_scale * jnp.tensordot(h, b.astype(self.dtype), axes=1)
        return y


class LayerNorm(nn.Module):
    axis_name: str = "embed"
    dtype: Dtype = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],),
        )
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + 1e-6) * scale
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
                (x.shape[-1],),
            )
            y = y + bias
        return y.astype(self.dtype)


def _l2_normalize(x: jax.Array) -> jax.Array:
    """Unit norm over the last axis, computed in float32, returned in x's dtype."""
    inv = jax.lax.rsqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), -1, keepdims=True) + 1e-6)
    return x * inv.astype(x.dtype)


class Attention(nn.Module):
    """Multi-head attention; self-attention when `kv` is None.

    `qk_norm` normalises queries and keys (cosine-similarity attention with a learned
    temperature, as the original C-ViViT uses), which keeps logits bounded in bf16.
    """

    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    qk_norm: bool = False
    causal: bool = False

    @nn.compact
    def __call__(self, x_BQE: jax.Array, kv_BKE: jax.Array | None = None) -> jax.Array:
        kv_BKE = x_BQE if kv_BKE is None else kv_BKE
        proj = lambda name: DenseGeneral(  # noqa: E731
            (self.num_heads, self.head_dim),
            ("embed", "heads", "kv"),
            use_bias=False,
            dtype=self.dtype,
            name=name,
        )
        q_BQHD = proj("query")(x_BQE)
        k_BKHD = proj("key")(kv_BKE)
        v_BKHD = proj("value")(kv_BKE)
        if self.qk_norm:
            q_BQHD, k_BKHD = _l2_normalize(q_BQHD), _l2_normalize(k_BKHD)
            scale = self.param(
                "temperature",
                nn.with_logical_partitioning(nn.initializers.constant(10.0), ("heads",)),
                (self.num_heads,),
            )
            q_BQHD = q_BQHD * scale[:, None].astype(self.dtype)
        else:
            q_BQHD = q_BQHD * jnp.asarray(self.head_dim**-0.5, self.dtype)
        logits_BHQK = jnp.einsum("bqhd,bkhd->bhqk", q_BQHD, k_BKHD).astype(jnp.float32)
        if self.causal:
            q_len, k_len = logits_BHQK.shape[-2:]
            mask = jnp.tril(jnp.ones((q_len, k_len), bool), k_len - q_len)
            logits_BHQK = jnp.where(mask, logits_BHQK, jnp.finfo(jnp.float32).min)
        probs_BHQK = jax.nn.softmax(logits_BHQK, axis=-1).astype(self.dtype)
        out_BQHD = jnp.einsum("bhqk,bkhd->bqhd", probs_BHQK, v_BKHD)
        return DenseGeneral(
            x_BQE.shape[-1],
            ("heads", "kv", "embed"),
            in_axes=(-2, -1),
            use_bias=False,
            dtype=self.dtype,
            name="out",
        )(out_BQHD)


class MLP(nn.Module):
    hidden: int
    dtype: Dtype = jnp.float32
    gated: bool = False  # GEGLU, as in the original C-ViViT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = DenseGeneral(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="wi")(x)
        if self.gated:
            g = DenseGeneral(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="wg")(x)
            h = nn.gelu(g) * h
        else:
            h = nn.gelu(h)
        return DenseGeneral(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="wo")(h)


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    num_heads: int
    head_dim: int
    mlp_hidden: int
    dtype: Dtype = jnp.float32
    causal: bool = False
    cross: bool = False
    qk_norm: bool = False
    gated_mlp: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        attn = lambda causal, name: Attention(  # noqa: E731
            self.num_heads, self.head_dim, self.dtype, self.qk_norm, causal, name=name
        )
        x = x + attn(self.causal, "self_attn")(LayerNorm(dtype=self.dtype, name="ln_self")(x))
        if self.cross:
            assert context is not None, "a cross-attention block needs a context"
            ctx = LayerNorm(dtype=self.dtype, name="ln_context")(context)
            x = x + attn(False, "cross_attn")(LayerNorm(dtype=self.dtype, name="ln_cross")(x), ctx)
        x = x + MLP(self.mlp_hidden, self.dtype, self.gated_mlp, name="mlp")(
            LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
        )
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))
