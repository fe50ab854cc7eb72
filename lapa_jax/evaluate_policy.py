"""Closed-loop evaluation of a finetuned policy in Meta-World.

    python -m lapa_jax.evaluate_policy --workdir runs/finetune --episodes 20 \
        [--tasks reach-v3,push-v3] [--seed 0] [--max_frames 100] [--execution receding]

Runs the policy with the camera, image size and action repeat its training data was
rendered with (read from the dataset's generation.json), on the dataset's tasks unless
--tasks says otherwise. Every episode's layout comes from a seed that depends only on
(--seed, task, episode index), drawn from a different seed family than the dataset's
demonstrations, so results reproduce and no evaluation layout is a training layout.
An episode succeeds when Meta-World reports success at any step before --max_frames
policy steps. Writes to --out (default WORKDIR/closed_loop): results.json (every
episode, per-task success rate and mean length), a success summary PNG, and rollout
videos of the first --videos_per_task episodes of each task; prints a table.

The policy runs batched over episodes in this process; the simulators and renderers
run in spawned worker processes (lapa_jax.sim.vec_env), so this works whatever the
calling process has loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from lapa_jax.sim import metaworld as mw

# Evaluation layouts come from this seed family; datasets use small base seeds.
EVAL_SEED_BASE = 1_000_003


class ChunkPolicy(Protocol):
    chunk_size: int

    def predict_batch(
        self, images: list[np.ndarray], instructions: list[str], temperature: float = 0.0
    ) -> np.ndarray: ...


@dataclasses.dataclass
class EpisodeResult:
    task: str
    index: int
    seed: int
    success: bool
    length: int  # policy steps taken (to the first success, or max_frames)
    frames: list[np.ndarray] | None = None  # recorded episodes only


def eval_seed(seed: int, task: str, index: int) -> int:
    return mw.episode_seed(EVAL_SEED_BASE + seed, task, index)


def rollout_config_of(data_dir: str) -> tuple[mw.RolloutConfig, list[str]]:
    """The camera / image size / action repeat and tasks a Meta-World dataset was made with."""
    path = os.path.join(data_dir, "generation.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: closed-loop evaluation needs a Meta-World dataset made by "
            "data_pipelines.metaworld_rlds (or pass --image_size, --camera and --tasks)"
        )
    with open(path) as f:
        gen = json.load(f)
    fields = {f.name for f in dataclasses.fields(mw.RolloutConfig)}
    rc = {k: v for k, v in gen.get("rollout_config", {}).items() if k in fields}
    return mw.RolloutConfig(**rc), list(gen.get("tasks", []))


def run_episodes(
    policy: ChunkPolicy,
    tasks: Sequence[str],
    episodes: int,
    rollout: mw.RolloutConfig,
    seed: int = 0,
    max_frames: int = 100,
    num_workers: int = 2,
    batch_slots: int = 16,
    record: int = 1,
    execution: str = "receding",
    execute_steps: int = 0,
    ensemble_decay: float = 0.01,
    temperature: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[EpisodeResult]:
    """Every (task, episode) run to success or max_frames, `batch_slots` at a time.

    The first `record` episodes of each task keep their frames. Results come back in
    (task, index) order whatever the scheduling, and each depends only on its own seed
    (greedy decoding; sampled decoding is seeded per call, not per episode).
    """
    from lapa_jax.policy import ChunkExecutor
    from lapa_jax.sim.vec_env import MetaWorldVecEnv

    for task in tasks:
        mw.check_task(task)
    if episodes < 1 or max_frames < 1 or batch_slots < 1:
        raise ValueError(
            f"episodes, max_frames and batch_slots must be >= 1, got {episodes}, "
            f"{max_frames}, {batch_slots}"
        )
    queue = [(task, i) for task in tasks for i in range(episodes)]
    total = len(queue)
    queue.reverse()  # pop() from the end takes them in order
    done: list[EpisodeResult] = []
    active: dict[int, dict[str, Any]] = {}
    calls = 0
    with MetaWorldVecEnv(rollout, num_workers) as env:

        def fill() -> None:
            new = {}
            for slot in range(batch_slots):
                if slot not in active and queue:
                    task, index = queue.pop()
                    s = eval_seed(seed, task, index)
                    ex = ChunkExecutor(policy.chunk_size, execution, execute_steps, ensemble_decay)
                    active[slot] = dict(
                        result=EpisodeResult(task, index, s, False, 0),
                        executor=ex,
                        frames=[] if index < record else None,
                    )
                    new[slot] = (task, s)
            if new:
                for slot, img in env.reset(new).items():
                    active[slot]["image"] = img

        fill()
        while active:
            slots = sorted(active)
            ask = [s for s in slots if active[s]["executor"].needs_prediction()]
            if ask:
                chunks = policy.predict_batch(
                    [active[s]["image"] for s in ask],
                    [mw.TASK_INSTRUCTIONS[active[s]["result"].task] for s in ask],
                    temperature,
                )
                calls += 1
                for s, chunk in zip(ask, chunks, strict=True):
                    active[s]["executor"].add(chunk)
            actions = {}
            for s in slots:
                ep = active[s]
                if ep["frames"] is not None:
                    ep["frames"].append(ep["image"])
                actions[s] = ep["executor"].next_action()
            for s, (img, success, truncated) in env.step(actions).items():
                ep = active[s]
                r = ep["result"]
                r.length += 1
                ep["image"] = img
                if success or truncated or r.length >= max_frames:
                    r.success = bool(success)
                    if ep["frames"] is not None:
                        ep["frames"].append(img)
                        r.frames = ep["frames"]
                    done.append(r)
                    del active[s]
                    if progress is not None:
                        progress(len(done), total)
            fill()
    done.sort(key=lambda r: (list(tasks).index(r.task), r.index))
    return done


def summarize(results: Sequence[EpisodeResult], tasks: Sequence[str]) -> dict[str, Any]:
    per_task = {}
    for task in tasks:
        rs = [r for r in results if r.task == task]
        ok = [r for r in rs if r.success]
        per_task[task] = {
            "episodes": len(rs),
            "successes": len(ok),
            "success_rate": len(ok) / len(rs) if rs else float("nan"),
            "mean_length": float(np.mean([r.length for r in rs])) if rs else float("nan"),
            "mean_success_length": float(np.mean([r.length for r in ok])) if ok else None,
        }
    rates = [v["success_rate"] for v in per_task.values()]
    return {
        "success_rate": float(np.mean(rates)) if rates else float("nan"),
        "episodes": len(results),
        "per_task": per_task,
    }


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"{'task':<28} {'success':>8} {'rate':>6} {'mean len':>9}",
        "-" * 54,
    ]
    for task, v in summary["per_task"].items():
        lines.append(
            f"{task:<28} {v['successes']:>3}/{v['episodes']:<4} {v['success_rate']:>6.2f} "
            f"{v['mean_length']:>9.1f}"
        )
    lines.append("-" * 54)
    lines.append(f"{'mean over tasks':<28} {'':>8} {summary['success_rate']:>6.2f}")
    return "\n".join(lines)


def write_outputs(
    out_dir: str,
    results: Sequence[EpisodeResult],
    summary: dict[str, Any],
    meta: dict[str, Any],
    fps: float = 10.0,
    scale: int = 4,
) -> dict[str, Any]:
    """results.json, success.png and the recorded rollouts (mp4, upscaled `scale`x)."""
    from lapa_jax import plots
    from lapa_jax.video import write_video

    os.makedirs(out_dir, exist_ok=True)
    videos = []
    for r in results:
        if r.frames:
            frames = np.stack(r.frames)
            frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
            outcome = "success" if r.success else "failure"
            path = os.path.join(out_dir, f"rollout_{r.task}_{r.index:03d}_{outcome}.mp4")
            videos.append(write_video(path, frames, fps))
    tasks = list(summary["per_task"])
    png = plots.grouped_bars(
        os.path.join(out_dir, "success.png"),
        [t.removesuffix("-v3") for t in tasks],
        {
            os.path.basename(meta.get("workdir", "policy")): [
                summary["per_task"][t]["success_rate"] for t in tasks
            ]
        },
        title=f"closed-loop success, {summary['episodes']} episodes "
        f"(mean {summary['success_rate']:.2f})",
    )
    record = {
        **meta,
        **summary,
        "videos": videos,
        "summary_png": png,
        "episodes_detail": [
            {
                "task": r.task,
                "index": r.index,
                "seed": r.seed,
                "success": r.success,
                "length": r.length,
            }
            for r in results
        ],
    }
    path = os.path.join(out_dir, "results.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
    record["results_json"] = path
    return record


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a finetuned (action_finetune) run")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--tasks", default="", help="comma-separated; default: the dataset's tasks")
    p.add_argument("--episodes", type=int, default=20, help="episodes per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_frames", type=int, default=100, help="policy steps per episode")
    p.add_argument("--workers", type=int, default=2, help="simulator processes")
    p.add_argument("--batch_slots", type=int, default=16, help="episodes run at once")
    p.add_argument("--videos_per_task", type=int, default=1)
    p.add_argument(
        "--execution",
        default="",
        choices=("", "receding", "ensemble"),
        help="how chunks run; default: the run's config.execution (receding)",
    )
    p.add_argument("--execute_steps", type=int, default=0, help="receding: 0 = whole chunk")
    p.add_argument("--ensemble_decay", type=float, default=0.01)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--image_size", type=int, default=0, help="override the dataset's")
    p.add_argument("--camera", default="", help="override the dataset's")
    p.add_argument("--out", default="", help="default: WORKDIR/closed_loop")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from lapa_jax.evaluate_laq import load_config
    from lapa_jax.policy import Policy

    config = load_config(args.workdir)
    execution = args.execution or config.get("execution", "receding")
    overrides = args.image_size and args.camera and args.tasks
    if overrides:
        rollout, data_tasks = mw.RolloutConfig(), []
    else:
        rollout, data_tasks = rollout_config_of(config.data.dir)
    if args.image_size:
        rollout = dataclasses.replace(rollout, image_size=args.image_size)
    if args.camera:
        rollout = dataclasses.replace(rollout, camera=args.camera)
    tasks = [t for t in args.tasks.split(",") if t] or data_tasks
    if not tasks:
        raise ValueError("no tasks: pass --tasks")
    policy = Policy.load(args.workdir, args.step, batch_size=args.batch_slots)
    t0 = time.perf_counter()
    last = [0.0]

    def progress(n: int, total: int) -> None:
        if time.perf_counter() - last[0] > 5 or n == total:
            last[0] = time.perf_counter()
            print(f"  {n}/{total} episodes, {last[0] - t0:.0f} s", flush=True)

    print(
        f"Closed-loop evaluation of {args.workdir} (step {policy.step}): {len(tasks)} tasks x "
        f"{args.episodes} episodes, camera {rollout.camera} {rollout.image_size}px",
        flush=True,
    )
    results = run_episodes(
        policy,
        tasks,
        args.episodes,
        rollout,
        seed=args.seed,
        max_frames=args.max_frames,
        num_workers=args.workers,
        batch_slots=args.batch_slots,
        record=args.videos_per_task,
        execution=execution,
        execute_steps=args.execute_steps,
        ensemble_decay=args.ensemble_decay,
        temperature=args.temperature,
        progress=progress,
    )
    summary = summarize(results, tasks)
    meta = {
        "workdir": os.path.abspath(args.workdir),
        "step": int(policy.step),
        "seed": args.seed,
        "max_frames": args.max_frames,
        "execution": execution,
        "execute_steps": args.execute_steps,
        "chunk_size": policy.chunk_size,
        "temperature": args.temperature,
        "rollout_config": dataclasses.asdict(rollout),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = write_outputs(
        args.out or os.path.join(args.workdir, "closed_loop"), results, summary, meta
    )
    print(table(summary))
    print(f"results: {out['results_json']}\nsummary: {out['summary_png']}")
    for v in out["videos"]:
        print(f"video:   {v}")
    return out


if __name__ == "__main__":
    main()
