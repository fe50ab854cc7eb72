"""Stage-2 training throughput: tokens/s and model GFLOP/s against this machine's
matmul ceiling.

    python -m benchmarks.vlm_throughput [--variant metaworld] [--batch 32] [--cpu_devices 2]

A full jitted train step of the latent-pretraining task (forward, backward, AdamW) on
random images, prompts and latent codes, after compilation and warm-up; model FLOPs
come from XLA's cost analysis of the step. The ceiling is a large square matmul in the
model's compute dtype, on all devices at once (one per device, data parallel), which
is what the step can at best approach. On a GPU machine, run it with
`--variant 1b --batch 8 --cpu_devices 0` for the 1b model's MFU.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np


def ceiling_gflops(dtype: str, n: int = 2048, reps: int = 10) -> float:
    """Aggregate matmul GFLOP/s: one [n, n] x [n, n] product per device, in parallel."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from lapa_jax.sharding import make_mesh

    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    mesh = make_mesh({"data": -1})
    d = mesh.devices.size
    shard = NamedSharding(mesh, PartitionSpec("data"))
    a = jax.device_put(jax.random.normal(jax.random.key(0), (d, n, n), dt), shard)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (d, n, n), dt), shard)
    f = jax.jit(lambda x, y: jnp.einsum("dij,djk->dik", x, y), out_shardings=shard)
    f(a, b).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a, b)
    out.block_until_ready()
    return 2 * d * n**3 * reps / (time.perf_counter() - t0) / 1e9


def bench(variant: str, batch: int, steps: int, dtype: str = "") -> dict[str, Any]:
    import jax

    from experiments import latent_pretrain
    from lapa_jax.trainer import Trainer

    c = latent_pretrain.get_config(variant)
    c.data.tokenizer = ""
    if not c.model.vocab_size:
        c.model.vocab_size = 512
    if not c.model.num_latent_tokens:  # "from the labels": the paper's layout here
        c.model.num_latent_tokens, c.model.latent_codes = 4, 8
    c.train.batch_size = batch
    if dtype:
        c.model.dtype = dtype
    c.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    trainer = Trainer(c, "/tmp/vlm_bench_unused")
    state = trainer.init_state()
    m = trainer.task.model_cfg
    rng = np.random.default_rng(0)
    host = {
        "image": rng.random((batch, m.image_size, m.image_size, 3), dtype=np.float32),
        "text": rng.integers(4, m.vocab_size, (batch, m.max_text_len)).astype(np.int32),
        "text_mask": np.ones((batch, m.max_text_len), bool),
        "latent": rng.integers(0, m.latent_codes, (batch, m.num_latent_tokens)).astype(np.int32),
    }
    from lapa_jax import sharding

    g = sharding.host_batch_to_global(host, trainer.mesh)
    cost = trainer._step_fn.lower(state, g).cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost["flops"])
    from benchmarks.common import time_train_steps

    step_s = float(np.median(time_train_steps(trainer, state, host, steps)["times"]))
    return {
        "variant": variant,
        "dtype": m.dtype,
        "batch_size": batch,
        "sequence_length": m.seq_len,
        "parameters": trainer.num_params(),
        "devices": jax.device_count(),
        "step_seconds_median": step_s,
        "samples_per_second": batch / step_s,
        "tokens_per_second": batch * m.seq_len / step_s,
        "step_flops_xla": flops,
        "achieved_gflops": flops / step_s / 1e9,
        "timed_steps": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", default="metaworld")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cpu_devices", type=int, default=os.cpu_count() or 1)
    p.add_argument("--dtype", default="", help="compute dtype (default: the variant's)")
    p.add_argument("--out", default="results/vlm_throughput.json")
    args = p.parse_args()
    import jax

    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    from benchmarks.common import write_result

    r = bench(args.variant, args.batch, args.steps, args.dtype)
    ceilings = {dt: ceiling_gflops(dt) for dt in ("float32", "bfloat16")}
    r["matmul_ceiling_gflops"] = ceilings
    r["fraction_of_ceiling"] = r["achieved_gflops"] / ceilings[r["dtype"]]
    r["fraction_of_best_ceiling"] = r["achieved_gflops"] / max(ceilings.values())
    print(
        f"{args.variant}: {r['tokens_per_second']:.0f} tokens/s ({r['samples_per_second']:.1f} "
        f"samples/s, batch {args.batch}, {r['devices']} devices), {r['achieved_gflops']:.0f} "
        f"GFLOP/s = {100 * r['fraction_of_ceiling']:.0f}% of the {r['dtype']} matmul ceiling "
        f"({ceilings[r['dtype']]:.0f} GFLOP/s; float32 {ceilings['float32']:.0f}, bfloat16 "
        f"{ceilings['bfloat16']:.0f}); goal 60%"
    )
    write_result(
        args.out,
        "vlm_throughput",
        {"flops_source": "XLA cost analysis of the lowered train step", "result": r},
    )


if __name__ == "__main__":
    main()
