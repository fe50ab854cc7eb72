"""Throughput of dataset generation (frames/s) and of the frame-pair pipeline (batches/s).

    python -m benchmarks.data_throughput [--out benchmarks/results/data_throughput.json]

Generation: Meta-World expert rollouts rendered at 64x64 and written as RLDS, timed
end to end (worker start-up included). Pipeline: frame pairs (H=2) at batch 64,
64x64 float32, from that dataset, after a warm-up; in this process and with Grain
worker processes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from benchmarks.common import write_result
from data_pipelines import metaworld_rlds
from lapa_jax.data import pipelines
from lapa_jax.data.sources import EpisodeSource
from lapa_jax.sim import metaworld as mw


def bench_generation(out: str, tasks: list[str], episodes: int, workers: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = metaworld_rlds.build_dataset(
        out,
        tasks=tasks,
        episodes_per_task=episodes,
        val_episodes_per_task=0,
        config=mw.RolloutConfig(image_size=64),
        workers=workers,
        compute_statistics=False,
        verbose=False,
    )
    wall = time.perf_counter() - t0
    return {
        "tasks": tasks,
        "episodes": summary["episodes"],
        "frames": summary["frames"],
        "workers": workers,
        "wall_seconds": round(wall, 2),
        "frames_per_second": round(summary["frames"] / wall, 1),
    }


def bench_pipeline(data_dir: str, batch: int, batches: int, worker_count: int) -> dict[str, Any]:
    source = EpisodeSource(data_dir, "metaworld")
    pairs = pipelines.FramePairSource(source, 2, pipelines.ImageConfig(size=64, dtype="float32"))
    cfg = pipelines.LoaderConfig(
        global_batch_size=batch, seed=0, worker_count=worker_count, shard_index=0, shard_count=1
    )
    it = iter(pipelines.make_loader(pairs, cfg))
    for _ in range(3):  # warm-up (worker start-up, first reads)
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
    dt = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()
    return {
        "batch_size": batch,
        "image_size": 64,
        "frame_gap": 2,
        "worker_count": worker_count,
        "batches": batches,
        "batch_shape": list(b["frames"].shape),
        "batches_per_second": round(batches / dt, 2),
        "pairs_per_second": round(batches * batch / dt, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/data_throughput.json")
    p.add_argument("--tasks", default="reach-v3,push-v3,drawer-open-v3,button-press-topdown-v3")
    p.add_argument("--episodes_per_task", type=int, default=10)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batches", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "metaworld")
        gen = bench_generation(
            data_dir, args.tasks.split(","), args.episodes_per_task, args.workers
        )
        print(
            f"generation: {gen['frames_per_second']} frames/s ({gen['frames']} frames)", flush=True
        )
        pipes = []
        for wc in (0, 2):
            r = bench_pipeline(data_dir, 64, args.batches, wc)
            print(
                f"frame pairs, batch 64, {wc} workers: {r['batches_per_second']} batches/s",
                flush=True,
            )
            pipes.append(r)
    write_result(args.out, "data_throughput", {"generation": gen, "frame_pair_pipeline": pipes})


if __name__ == "__main__":
    main()
