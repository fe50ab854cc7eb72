"""What a model costs before it runs: parameter counts, the mesh partition spec of
every parameter, and bytes of parameters plus optimizer state per device.

Everything here works on `jax.eval_shape` output, so a 7B configuration is checked on a
laptop CPU; the golden-spec test uses it to catch sharding regressions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from flax import traverse_util


def flat_mesh_specs(boxed_params: Any, rules: Sequence[tuple[str, Any]]) -> dict[str, list]:
    """'/'-joined parameter path -> its mesh PartitionSpec as a list (JSON-friendly)."""
    logical = nn.get_partition_spec(boxed_params)
    flat = traverse_util.flatten_dict(
        logical, sep="/", is_leaf=lambda _, v: not isinstance(v, dict)
    )
    out = {}
    for path, spec in sorted(flat.items()):
        mesh_spec = nn.logical_to_mesh_axes(spec, list(rules)) if spec is not None else ()
        out[path] = [list(a) if isinstance(a, tuple) else a for a in tuple(mesh_spec or ())]
    return out


def count_params(boxed_params: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(boxed_params))))


def bytes_per_device(
    boxed_params: Any,
    rules: Sequence[tuple[str, Any]],
    mesh_shape: Mapping[str, int],
    param_bytes: int = 4,
    optimizer_copies: int = 2,
) -> dict[str, float]:
    """Per-device bytes of float32 parameters and Adam's two moments under `mesh_shape`
    (each dimension divided by the product of the mesh axes that shard it, rounded up)."""
    specs = flat_mesh_specs(boxed_params, rules)
    flat = traverse_util.flatten_dict(nn.meta.unbox(boxed_params), sep="/")
    total = 0
    for path, leaf in flat.items():
        spec = specs[path] + [None] * (len(leaf.shape) - len(specs[path]))
        n = 1
        for dim, axes in zip(leaf.shape, spec, strict=True):
            names = axes if isinstance(axes, list) else ([axes] if axes else [])
            shards = math.prod(mesh_shape.get(a, 1) for a in names)
            n *= -(-dim // shards)
        total += n
    params = total * param_bytes
    return {
        "params_bytes": float(params),
        "optimizer_bytes": float(params * optimizer_copies),
        "total_bytes": float(params * (1 + optimizer_copies)),
    }
