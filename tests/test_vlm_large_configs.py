"""The 1b and 7b stage-2 configs, by shape only: parameter counts, memory per device on
a pod mesh, and every parameter's partition spec against a committed golden file (set
LAPA_UPDATE_GOLDEN=1 to rewrite it after an intended sharding change)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import pytest

from experiments import latent_pretrain as lp_experiment
from lapa_jax import model_budget
from lapa_jax.models.vlm import VLM, VLMConfig
from lapa_jax.sharding import rules_from_config

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _abstract(variant: str):
    c = lp_experiment.get_config(variant)
    cfg = VLMConfig.from_dict(c.model.to_dict())
    model = VLM(cfg)
    s, t = cfg.image_size, cfg.max_text_len
    boxed = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, s, s, 3)),
            jnp.zeros((1, t), jnp.int32),
            jnp.ones((1, t), bool),
            jnp.zeros((1, 4), jnp.int32),
        )
    )["params"]
    return c, boxed


@pytest.mark.parametrize(
    "variant, low, high, mesh, max_gib",
    [
        ("1b", 0.8e9, 1.2e9, {"data": 1, "fsdp": 8, "tensor": 1}, 2.0),
        ("7b", 6.5e9, 8.0e9, {"data": 1, "fsdp": 16, "tensor": 4}, 1.6),
    ],
)
def test_large_config_size_memory_and_golden_specs(variant, low, high, mesh, max_gib):
    c, boxed = _abstract(variant)
    n = model_budget.count_params(boxed)
    assert low < n < high, n
    rules = rules_from_config(c.sharding_rules)
    mem = model_budget.bytes_per_device(boxed, rules, mesh)
    # float32 parameters + two Adam moments, split over the mesh.
    assert mem["total_bytes"] / 2**30 < max_gib, mem
    assert mem["total_bytes"] >= 12 * n / (mesh["fsdp"] * mesh["tensor"]) * 0.99
    specs = model_budget.flat_mesh_specs(boxed, rules)
    assert specs["layers/gate/kernel"] == [None, "fsdp", "tensor"]  # scanned: layers first
    path = os.path.join(GOLDEN, f"vlm_{variant}_partition_specs.json")
    if os.environ.get("LAPA_UPDATE_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"params": n, "specs": specs}, f, indent=1, sort_keys=True)
    with open(path) as f:
        golden = json.load(f)
    assert golden["params"] == n
    assert specs == golden["specs"]
