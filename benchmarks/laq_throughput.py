"""Train-step throughput of the latent action quantizer against this machine's ceiling.

    python -m benchmarks.laq_throughput [--configs small,paper] [--out benchmarks/results/laq_throughput.json]

For each config: samples/s of a full jitted train step (forward, backward, Adam update,
dead-code bookkeeping) on random frames, after compilation and warm-up, and the model
FLOPs of one step from XLA's cost analysis of the compiled step (so the count includes
the backward pass and the optimizer exactly as executed). Also measures the float32
matmul GFLOP/s of the same machine as the ceiling.

`small` is the reference PyTorch comparison point (64x64, patch 8, width 256, 4+4
encoder layers, 4 decoder layers, 4 heads of 64, batch 16); `paper` is the reference
config (256x256, patch 32, width 1024, 8+8+8 layers, 16 heads) at batch 2.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import time_train_steps, write_result
from experiments import laq as laq_experiment
from lapa_jax.trainer import Trainer

# Measured here for the original PyTorch implementation (samples/s), from issue 3.
PYTORCH_REFERENCE = {"small": 12.0, "paper": 0.34}


def matmul_gflops(n: int = 2048, reps: int = 20, dtype: Any = jnp.float32) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a, b)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def config_for(name: str, batch: int | None, dtype: str) -> Any:
    if name == "small":
        c = laq_experiment.get_config("metaworld")
        c.train.batch_size = batch or 16
    elif name == "paper":
        c = laq_experiment.get_config("paper")
        c.train.batch_size = batch or 2
    elif name == "tiny":
        c = laq_experiment.get_config("tiny")
        c.train.batch_size = batch or 8
    else:
        raise ValueError(name)
    c.model.dtype = dtype
    c.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    return c


def bench(name: str, steps: int, batch: int | None, dtype: str) -> dict[str, Any]:
    cfg = config_for(name, batch, dtype)
    trainer = Trainer(cfg, "/tmp/laq_bench_unused")
    state = trainer.init_state()
    s = cfg.model.image_size
    rng = np.random.default_rng(0)
    batch_np = {"frames": rng.random((cfg.train.batch_size, 2, s, s, 3), dtype=np.float32)}
    from lapa_jax import sharding

    g = sharding.host_batch_to_global(batch_np, trainer.mesh)
    # Global FLOPs of one step, from the lowered (not yet partitioned) program.
    cost = trainer._step_fn.lower(state, g).cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    timed = time_train_steps(trainer, state, batch_np, steps)
    m, warm, times = timed["metrics"], timed["warmup_s"], timed["times"]
    step_s = float(np.median(times))
    bs = cfg.train.batch_size
    result = {
        "config": name,
        "dtype": dtype,
        "batch_size": bs,
        "parameters": trainer.num_params(),
        "step_seconds_median": step_s,
        "samples_per_second": bs / step_s,
        "step_flops_xla": flops,
        "achieved_gflops": flops / step_s / 1e9,
        "warmup_step_seconds": warm,
        "timed_steps": steps,
        "loss_finite": bool(np.isfinite(float(m["loss"]))),
    }
    ref = PYTORCH_REFERENCE.get(name)
    if ref:
        result["pytorch_reference_samples_per_second"] = ref
        result["speedup_vs_pytorch"] = result["samples_per_second"] / ref
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", default="small,paper")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--paper_steps", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default="benchmarks/results/laq_throughput.json")
    args = p.parse_args()
    ceiling = matmul_gflops()
    print(f"float32 matmul ceiling: {ceiling:.1f} GFLOP/s", flush=True)
    results = []
    for name in args.configs.split(","):
        r = bench(name, args.paper_steps if name == "paper" else args.steps, None, args.dtype)
        r["fraction_of_matmul_ceiling"] = r["achieved_gflops"] / ceiling
        print(
            f"{name}: {r['samples_per_second']:.2f} samples/s at batch {r['batch_size']}, "
            f"{r['achieved_gflops']:.1f} GFLOP/s ({100 * r['fraction_of_matmul_ceiling']:.0f}% of ceiling)"
            + (f", {r['speedup_vs_pytorch']:.2f}x PyTorch" if "speedup_vs_pytorch" in r else ""),
            flush=True,
        )
        results.append(r)
    write_result(
        args.out,
        "laq_throughput",
        {
            "flops_source": "XLA cost analysis of the lowered train step (forward + backward + update)",
            "matmul_gflops_ceiling": ceiling,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
