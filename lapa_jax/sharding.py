"""Device meshes from config, and the sharding of input batches.

A mesh is declared as an ordered mapping of axis name to size, e.g.
{"data": -1, "fsdp": 1, "tensor": 1}; -1 takes the devices left over. The batch
dimension of every input is split over the data-parallel axes ("data" and "fsdp").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    sizes = dict(axes)
    if not sizes:
        raise ValueError("mesh axes must not be empty")
    unknown = [k for k, v in sizes.items() if v == -1]
    if len(unknown) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {unknown}")
    for name, size in sizes.items():
        if size != -1 and (not isinstance(size, int) or size < 1):
            raise ValueError(f"mesh axis {name!r} has invalid size {size!r}")
    known = math.prod(v for v in sizes.values() if v != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(
                f"mesh {dict(axes)}: {num_devices} devices are not divisible by the fixed axes ({known})"
            )
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(
            f"mesh {dict(axes)} needs {math.prod(sizes.values())} devices, have {num_devices}"
        )
    return sizes


def make_mesh(axes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over `devices` (default: all). A fully specified mesh smaller than a
    single process's device set uses its first devices (e.g. a 1-device reference run)."""
    devices = list(jax.devices() if devices is None else devices)
    wanted = math.prod(axes.values())
    if -1 not in axes.values() and wanted < len(devices) and jax.process_count() == 1:
        devices = devices[:wanted]
    sizes = resolve_mesh_shape(axes, len(devices))
    device_array = np.asarray(devices).reshape(tuple(sizes.values()))
    return Mesh(device_array, tuple(sizes.keys()))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh) or None))


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def host_batch_to_global(batch: Any, mesh: Mesh) -> Any:
    """Assembles each host's batch into global `jax.Array`s sharded over the batch axes.

    Every process passes its own slice (its per-host batch); the global batch size is
    the sum over processes. Non-numeric leaves (e.g. instruction strings) stay on host.
    """
    sharding = batch_sharding(mesh)
    dp = data_parallel_size(mesh)

    def to_global(x: Any) -> Any:
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            return x
        global_batch = x.shape[0] * jax.process_count()
        if global_batch % dp:
            raise ValueError(
                f"global batch {global_batch} is not divisible by the data-parallel size {dp}"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(to_global, batch)


# Logical axis name -> mesh axis (or axes, or None: replicated). Models name their
# parameter and activation axes; this table, overridable in config, places them.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("length", None),
    ("patch", None),
    ("latent", None),
    ("codebook", None),
    ("layers", None),  # the stacked axis of scanned blocks
    ("kv_heads", None),  # grouped-query attention: often fewer kv heads than tensor shards
    ("embed_vit", None),  # the ViT side of its projection into the language model
)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
    """Accepts a list of [name, axis] pairs (axis: str, list of str, or None)."""
    out = []
    for item in rules:
        if len(item) != 2:
            raise ValueError(f"a sharding rule must be [logical_name, mesh_axis], got {item!r}")
        name, axis = item
        out.append((str(name), tuple(axis) if isinstance(axis, list | tuple) else axis))
    return tuple(out)


def check_rules(rules: Sequence[tuple[str, Any]], mesh: Mesh) -> None:
    for name, axis in rules:
        axes = axis if isinstance(axis, tuple) else (axis,)
        for a in axes:
            if a is not None and a not in mesh.axis_names:
                raise ValueError(
                    f"sharding rule {name!r} -> {axis!r} names mesh axis {a!r}, but the mesh has "
                    f"{mesh.axis_names}"
                )


def logical_to_shardings(logical_specs: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """A tree of logical PartitionSpecs -> a tree of NamedShardings on `mesh`."""
    import flax.linen as nn

    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
