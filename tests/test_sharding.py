"""Meshes from config and host batches assembled into global sharded arrays."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lapa_jax import sharding


def test_resolve_mesh_shape():
    assert sharding.resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {
        "data": 4,
        "fsdp": 2,
        "tensor": 1,
    }
    with pytest.raises(ValueError, match="at most one"):
        sharding.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.resolve_mesh_shape({"data": -1, "fsdp": 3}, 8)
    with pytest.raises(ValueError, match="needs 4 devices"):
        sharding.resolve_mesh_shape({"data": 2, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="invalid size"):
        sharding.resolve_mesh_shape({"data": 0}, 8)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_host_batch_to_global_on_8_devices():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.data_parallel_size(mesh) == 4
    batch = {
        "frames": np.arange(8 * 2 * 3, dtype=np.float32).reshape(8, 2, 3),
        "t": np.arange(8, dtype=np.int32),
        "instruction": np.array(["a"] * 8),
    }
    g = sharding.host_batch_to_global(batch, mesh)
    assert isinstance(g["frames"], jax.Array) and g["frames"].shape == (8, 2, 3)
    np.testing.assert_array_equal(np.asarray(g["frames"]), batch["frames"])
    assert g["frames"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    # Each of the 4 data-parallel shards holds 2 rows, replicated over the tensor axis.
    shapes = {s.data.shape for s in g["frames"].addressable_shards}
    assert shapes == {(2, 2, 3)}
    assert isinstance(g["instruction"], np.ndarray)  # strings stay on host
    with pytest.raises(ValueError, match="not divisible by the data-parallel size 4"):
        sharding.host_batch_to_global({"x": np.zeros((6, 2))}, mesh)
