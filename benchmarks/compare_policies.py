"""Side-by-side report of finetuned runs that were evaluated closed loop.

    python -m benchmarks.compare_policies --out results/finetune_metaworld \
        lapa=runs/ft_lapa scratch=runs/ft_scratch

Reads each run's closed_loop/results.json (lapa_jax.evaluate_policy), its last held-out
report (eval_* in metrics.jsonl) and its training time, and writes summary.json,
table.md (success per task and arm) and success.png (grouped bars).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from lapa_jax import plots


def read_run(workdir: str) -> dict[str, Any]:
    path = os.path.join(workdir, "closed_loop", "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run lapa_jax.evaluate_policy on {workdir}")
    with open(path) as f:
        closed = json.load(f)
    offline: dict[str, float] = {}
    train_s = None
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if any(k.startswith("eval_") for k in row):
                offline = {k[5:]: v for k, v in row.items() if k.startswith("eval_")}
            if "wall_time_s" in row:
                train_s = row["wall_time_s"]
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    return {
        "workdir": workdir,
        "head": config.get("head", "binned"),
        "init_from": config.get("init_from", ""),
        "steps": config["train"]["steps"],
        "train_seconds": train_s,
        "success_rate": closed["success_rate"],
        "per_task": {t: v["success_rate"] for t, v in closed["per_task"].items()},
        "episodes": closed["episodes"],
        "eval_seed": closed["seed"],
        "max_frames": closed["max_frames"],
        "execution": closed.get("execution"),
        "offline": offline,
    }


def table(runs: dict[str, dict[str, Any]]) -> str:
    names = list(runs)
    tasks = list(next(iter(runs.values()))["per_task"])
    lines = [
        "| task | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for t in tasks:
        cells = [f"{runs[n]['per_task'][t]:.2f}" for n in names]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append(
        "| **mean** | " + " | ".join(f"**{runs[n]['success_rate']:.2f}**" for n in names) + " |"
    )
    mse = [runs[n]["offline"].get("action_mse") for n in names]
    base = [runs[n]["offline"].get("mean_action_mse") for n in names]
    lines.append(
        "| held-out action MSE (mean-action baseline) | "
        + " | ".join(
            f"{m:.3f} ({b:.3f})" if m is not None else "-" for m, b in zip(mse, base, strict=True)
        )
        + " |"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("runs", nargs="+", help="name=workdir")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    runs = {}
    for spec in args.runs:
        name, sep, workdir = spec.partition("=")
        if not sep or not name or not workdir:
            raise ValueError(f"expected name=workdir, got {spec!r}")
        runs[name] = read_run(workdir)
    tasks = list(next(iter(runs.values()))["per_task"])
    for name, r in runs.items():
        if list(r["per_task"]) != tasks:
            raise ValueError(f"{name} was evaluated on {list(r['per_task'])}, not {tasks}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(runs, f, indent=2)
    md = table(runs)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md + "\n")
    plots.grouped_bars(
        os.path.join(args.out, "success.png"),
        [t.removesuffix("-v3") for t in tasks],
        {n: [r["per_task"][t] for t in tasks] for n, r in runs.items()},
        title="closed-loop success per task",
    )
    print(md)
    return runs


if __name__ == "__main__":
    main()
