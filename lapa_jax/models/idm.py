"""An inverse dynamics model: which action turned frame x_t into x_{t+1}?

The VPT-style baseline of the LAPA experiment trains one on the few action-labelled
demonstrations and uses it to pseudo-label the action-free videos. It sees both
frames and their difference (where the motion is) through a small strided CNN.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lapa_jax.models.layers import strict_from_dict


@dataclasses.dataclass(frozen=True)
class IDMConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 128)
    mlp: int = 256
    action_dim: int = 4

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"model.channels must be positive, got {self.channels}")
        if self.image_size < 2 ** len(self.channels):
            raise ValueError(
                f"image_size {self.image_size} is too small for {len(self.channels)} stride-2 convs"
            )
        if self.mlp < 1 or self.action_dim < 1:
            raise ValueError(
                f"model.mlp and action_dim must be >= 1, got {self.mlp}, {self.action_dim}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IDMConfig:
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(int(c) for c in d["channels"])
        return strict_from_dict(cls, d, "IDM")


class IDM(nn.Module):
    cfg: IDMConfig

    @nn.compact
    def __call__(self, frames_BTHWC: jax.Array) -> jax.Array:
        """Frame pairs [B, 2, H, W, C] in [0, 1] -> normalized actions [B, action_dim]."""
        x0, x1 = frames_BTHWC[:, 0], frames_BTHWC[:, 1]
        x = jnp.concatenate([x0, x1, x1 - x0], axis=-1)
        for i, ch in enumerate(self.cfg.channels):
            x = nn.gelu(nn.Conv(ch, (4, 4), strides=2, padding="SAME", name=f"conv_{i}")(x))
        x = nn.LayerNorm(name="norm")(x.reshape(x.shape[0], -1))
        x = nn.gelu(nn.Dense(self.cfg.mlp, name="hidden")(x))
        return nn.Dense(self.cfg.action_dim, kernel_init=nn.initializers.zeros, name="out")(x)
