"""Roll out Meta-World scripted experts and write them as an RLDS dataset through TFDS.

    python -m data_pipelines.metaworld_rlds --out DIR --tasks reach-v3,push-v3 \
        --episodes_per_task 40 --val_episodes_per_task 8 --image_size 64

Rendering happens in spawned worker processes (MuJoCo GL and TensorFlow crash in one
process); this process only encodes and writes. The dataset is written to a staging
folder and renamed into place, so DIR is either absent or a complete dataset, and it
opens with `tfds.builder_from_directory(DIR)`. Episode order is (split, task, index),
and every episode's seed depends only on (seed, task, index, attempt), so the same
arguments give the same dataset whatever the number of workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lapa_jax.data import rlds_writer
from lapa_jax.sim import metaworld as mw

DATASET_NAME = "metaworld"
DATASET_VERSION = "1.0.0"
DEFAULT_TASKS = mw.DEFAULT_TASKS
FILE_FORMATS = rlds_writer.FILE_FORMATS
IMAGE_ENCODINGS = ("png", "jpeg")


def features(image_size: int, image_encoding: str = "png") -> Any:
    """The RLDS feature spec, Bridge-style (see ../shared/README.md)."""
    import tensorflow_datasets as tfds

    f = tfds.features
    return f.FeaturesDict(
        {
            "steps": f.Dataset(
                {
                    "observation": f.FeaturesDict(
                        {
                            "image": f.Image(
                                shape=(image_size, image_size, 3),
                                dtype=np.uint8,
                                encoding_format=image_encoding,
                            ),
                            "state": f.Tensor(shape=(mw.STATE_DIM,), dtype=np.float32),
                            "full_state": f.Tensor(shape=(mw.FULL_STATE_DIM,), dtype=np.float32),
                        }
                    ),
                    "action": f.Tensor(shape=(mw.ACTION_DIM,), dtype=np.float32),
                    "language_instruction": f.Text(),
                    "reward": f.Scalar(dtype=np.float32),
                    "discount": f.Scalar(dtype=np.float32),
                    "is_first": f.Scalar(dtype=np.bool_),
                    "is_last": f.Scalar(dtype=np.bool_),
                    "is_terminal": f.Scalar(dtype=np.bool_),
                }
            ),
            "episode_metadata": f.FeaturesDict(
                {
                    "task": f.Text(),
                    "episode_id": f.Scalar(dtype=np.int64),
                    "success": f.Scalar(dtype=np.bool_),
                    "seed": f.Scalar(dtype=np.int64),
                }
            ),
        }
    )


def to_rlds_example(ep: dict[str, Any], episode_id: int) -> dict[str, Any]:
    n = len(ep["images"])
    return {
        "steps": {
            "observation": {
                "image": ep["images"],
                "state": ep["states"],
                "full_state": ep["full_states"],
            },
            "action": ep["actions"],
            "language_instruction": [ep["instruction"]] * n,
            "reward": ep["rewards"],
            "discount": np.ones(n, np.float32),
            "is_first": ep["is_first"],
            "is_last": ep["is_last"],
            "is_terminal": ep["is_terminal"],
        },
        "episode_metadata": {
            "task": ep["task"],
            "episode_id": episode_id,
            "success": ep["success"],
            "seed": ep["seed"],
        },
    }


class _Job:
    """Picklable worker function: roll out one episode index, retrying failures."""

    def __init__(self, base_seed: int, split_offset: int, max_attempts: int, keep_failed: bool):
        self.base_seed = base_seed
        self.split_offset = split_offset
        self.max_attempts = max_attempts
        self.keep_failed = keep_failed

    def __call__(self, job: tuple[str, int]) -> dict[str, Any]:
        task, index = job
        ep: dict[str, Any] = {}
        for attempt in range(self.max_attempts):
            seed = mw.episode_seed(self.base_seed, task, self.split_offset + index, attempt)
            ep = mw.worker_rollout_fn((task, seed))
            ep["attempts"] = attempt + 1
            if ep["success"] or self.keep_failed:
                break
        return ep


class GenerationStats:
    def __init__(self) -> None:
        self.frames = 0
        self.episodes = 0
        self.successes = 0
        self.start = time.perf_counter()
        self.per_task: dict[str, dict[str, int]] = {}

    def add(self, ep: dict[str, Any]) -> None:
        n = len(ep["images"])
        self.frames += n
        self.episodes += 1
        self.successes += int(ep["success"])
        t = self.per_task.setdefault(ep["task"], {"episodes": 0, "successes": 0, "frames": 0})
        t["episodes"] += 1
        t["successes"] += int(ep["success"])
        t["frames"] += n

    def summary(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.start
        return {
            "episodes": self.episodes,
            "frames": self.frames,
            "successes": self.successes,
            "seconds": round(elapsed, 3),
            "frames_per_second": round(self.frames / max(elapsed, 1e-9), 2),
            "per_task": self.per_task,
        }


def _split_examples(
    pool: Any,
    tasks: Sequence[str],
    episodes_per_task: int,
    job: _Job,
    stats: GenerationStats,
    id_offset: int,
    verbose: bool,
) -> Iterator[tuple[str, dict[str, Any]]]:
    jobs = [(task, i) for task in tasks for i in range(episodes_per_task)]
    for k, ep in enumerate(pool.imap(job, jobs)):
        stats.add(ep)
        if verbose and (k + 1) % max(1, len(jobs) // 10) == 0:
            s = stats.summary()
            print(
                f"  {k + 1}/{len(jobs)} episodes, {s['frames']} frames, "
                f"{s['frames_per_second']:.0f} frames/s",
                flush=True,
            )
        episode_id = id_offset + k
        yield f"{episode_id:08d}", to_rlds_example(ep, episode_id)


def build_dataset(
    out: str,
    tasks: Sequence[str] = DEFAULT_TASKS,
    episodes_per_task: int = 40,
    val_episodes_per_task: int = 8,
    config: mw.RolloutConfig | None = None,
    seed: int = 0,
    file_format: str = "array_record",
    image_encoding: str = "png",
    workers: int | None = None,
    max_attempts: int = 5,
    keep_failed: bool = False,
    overwrite: bool = False,
    compute_statistics: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Builds the dataset at `out` (the folder that holds dataset_info.json)."""
    config = config or mw.RolloutConfig()
    config.validate()
    for task in tasks:
        mw.check_task(task)
    if not tasks:
        raise ValueError("--tasks is empty")
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if val_episodes_per_task < 0:
        raise ValueError(f"val_episodes_per_task must be >= 0, got {val_episodes_per_task}")
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
    if image_encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"image_encoding must be one of {IMAGE_ENCODINGS}, got {image_encoding!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    out = rlds_writer.check_destination(out, overwrite)

    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    stats = GenerationStats()
    # Train and val seeds never overlap: val episode indices start after train's.
    val_offset = 1_000_000
    # Start the rendering workers before TensorFlow is loaded in this process.
    pool = mw.rollout_pool(config, workers)
    try:
        split_examples = {
            "train": _split_examples(
                pool,
                tasks,
                episodes_per_task,
                _Job(seed, 0, max_attempts, keep_failed),
                stats,
                0,
                verbose,
            )
        }
        if val_episodes_per_task:
            split_examples["val"] = _split_examples(
                pool,
                tasks,
                val_episodes_per_task,
                _Job(seed, val_offset, max_attempts, keep_failed),
                stats,
                val_offset,
                verbose,
            )
        summary: dict[str, Any] = {}

        def provenance() -> str:
            summary.update(stats.summary())
            summary.update(
                {
                    "tasks": list(tasks),
                    "episodes_per_task": episodes_per_task,
                    "val_episodes_per_task": val_episodes_per_task,
                    "seed": seed,
                    "file_format": file_format,
                    "rollout_config": dataclasses.asdict(config),
                }
            )
            return json.dumps(summary, indent=2)

        rlds_writer.write_rlds(
            out,
            name=DATASET_NAME,
            version=DATASET_VERSION,
            features=features(config.image_size, image_encoding),
            split_examples=split_examples,
            file_format=file_format,
            description=(
                "Meta-World scripted-expert episodes rendered by lapa-jax "
                f"(tasks={list(tasks)}, rollout={config})."
            ),
            overwrite=overwrite,
            extra_files={"generation.json": provenance},
            verbose=verbose,
        )
    finally:
        pool.terminate()
        pool.join()

    if compute_statistics and file_format == "array_record":
        from lapa_jax.data import sources, specs, statistics

        source = sources.EpisodeSource(out, specs.METAWORLD, split="train")
        statistics.save_statistics(out, statistics.compute_statistics(source), "train")
    if verbose:
        print(
            f"Wrote {summary['episodes']} episodes ({summary['frames']} frames, "
            f"{summary['successes']} successful) to {out} at "
            f"{summary['frames_per_second']:.0f} frames/s",
            flush=True,
        )
    return summary


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated task names")
    p.add_argument("--episodes_per_task", type=int, default=40)
    p.add_argument("--val_episodes_per_task", type=int, default=8)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--camera", default="corner")
    p.add_argument("--max_frames", type=int, default=60)
    p.add_argument("--action_repeat", type=int, default=2)
    p.add_argument("--action_noise", type=float, default=0.1)
    p.add_argument("--frames_after_success", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--file_format", default="array_record", choices=FILE_FORMATS)
    p.add_argument("--image_encoding", default="png", choices=IMAGE_ENCODINGS)
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: cores)")
    p.add_argument("--max_attempts", type=int, default=5, help="re-rolls of a failed episode")
    p.add_argument("--keep_failed", action="store_true", help="keep unsuccessful episodes")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    config = mw.RolloutConfig(
        image_size=args.image_size,
        camera=args.camera,
        max_frames=args.max_frames,
        action_repeat=args.action_repeat,
        action_noise=args.action_noise,
        frames_after_success=args.frames_after_success,
    )
    return build_dataset(
        out=args.out,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        episodes_per_task=args.episodes_per_task,
        val_episodes_per_task=args.val_episodes_per_task,
        config=config,
        seed=args.seed,
        file_format=args.file_format,
        image_encoding=args.image_encoding,
        workers=args.workers,
        max_attempts=args.max_attempts,
        keep_failed=args.keep_failed,
        overwrite=args.overwrite,
    )


if __name__ == "__main__":
    main()
