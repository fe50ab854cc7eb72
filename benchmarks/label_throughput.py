"""Latent-labelling throughput: frame pairs per second, end to end and in the encoder.

    python -m benchmarks.label_throughput --laq_workdir runs/laq [--src data/metaworld]

Labels the whole dataset (every split) into a fresh temporary folder with
data_pipelines.label_latent_actions, timing the run (reading, decoding, encoding,
serializing and writing overlap), and separately times the jitted encoder alone on a
resident batch after warm-up. Writes JSON (default results/label_throughput.json) with
both rates, the batch size and device count, and the label histogram of the data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import write_result

GOAL_PAIRS_PER_S = 1000.0


def encoder_only(laq_workdir: str, batch_size: int, reps: int = 10) -> dict[str, Any]:
    from lapa_jax.latent_encoder import LatentActionEncoder

    enc = LatentActionEncoder(laq_workdir, batch_size=batch_size)
    s = enc.image_size
    pairs = np.random.default_rng(0).integers(0, 256, (enc.batch_size, 2, s, s, 3), np.uint8)
    enc.encode(pairs)  # compile
    t0 = time.perf_counter()
    for _ in range(reps):
        enc.encode(pairs)
    dt = time.perf_counter() - t0
    cost = enc._encode.lower(enc.params, pairs).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA reports the FLOPs of one device's share of the sharded batch.
    flops_per_pair = float(cost["flops"]) * enc.mesh.devices.size / enc.batch_size
    rate = reps * enc.batch_size / dt
    return {
        "pairs_per_s": rate,
        "gflop_per_pair": flops_per_pair / 1e9,
        "achieved_gflop_per_s": rate * flops_per_pair / 1e9,
        "batch_size": enc.batch_size,
        "devices": int(enc.mesh.devices.size),
        "model": enc.describe()["model"],
        "checkpoint": enc.checkpoint_path,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--laq_workdir", required=True)
    p.add_argument("--src", default="data/metaworld")
    p.add_argument("--spec", default="metaworld")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--chunk_episodes", type=int, default=32)
    p.add_argument("--out", default="results/label_throughput.json")
    p.add_argument("--keep", default="", help="keep the labelled dataset at this folder")
    p.add_argument("--cpu_devices", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    import jax

    jax.config.update("jax_num_cpu_devices", args.cpu_devices)

    from data_pipelines.label_latent_actions import Labeller, histogram_table

    tmp = tempfile.mkdtemp(prefix="label_bench_")
    dst = args.keep or os.path.join(tmp, "labelled")
    try:
        t0 = time.perf_counter()
        labeller = Labeller(
            args.src,
            args.spec,
            args.laq_workdir,
            dst,
            batch_size=args.batch_size,
            chunk_episodes=args.chunk_episodes,
        )
        setup_s = time.perf_counter() - t0
        out = labeller.run()
        hist = {s: histogram_table(out["labels"], s) for s in labeller.splits}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    enc = encoder_only(args.laq_workdir, args.batch_size)
    for split, table in hist.items():
        print(f"label histogram ({split}):\n{table}")
    print(
        f"end to end: {out['pairs_per_s']:.0f} pairs/s ({out['pairs']} pairs in "
        f"{out['seconds']:.1f} s, after {setup_s:.1f} s of setup); encoder alone: "
        f"{enc['pairs_per_s']:.0f} pairs/s ({enc['gflop_per_pair']:.3f} GFLOP per pair, "
        f"{enc['achieved_gflop_per_s']:.0f} GFLOP/s); goal {GOAL_PAIRS_PER_S:.0f}"
    )
    write_result(
        args.out,
        "label_throughput",
        {
            "src": os.path.abspath(args.src),
            "end_to_end_pairs_per_s": out["pairs_per_s"],
            "pairs": out["pairs"],
            "seconds": out["seconds"],
            "setup_seconds": setup_s,
            "encoder_seconds": out["encode_s"],
            "encoder_only": enc,
            "goal_pairs_per_s": GOAL_PAIRS_PER_S,
            "labels": out["labels"]["splits"],
            "histograms": hist,
        },
    )


if __name__ == "__main__":
    main()
