"""The LAPA experiment's report, rebuilt from whatever jobs have finished: success
over tasks then seeds per arm and k, per-task tables, CPU hours per arm, the quantizer
and pretraining reports, and the charts (lapa_jax.metaworld_experiment runs the jobs)."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from lapa_jax.metaworld_experiment import HALF_ARMS, SHARED, Plan, Runner, eval_job_name


def _last_eval(workdir: str) -> dict[str, float]:
    path = os.path.join(workdir, "metrics.jsonl")
    out: dict[str, float] = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if any(k.startswith("eval_") for k in row):
                    out = {k[5:]: v for k, v in row.items() if k.startswith("eval_")}
    return out


def _closed_loop(workdir: str) -> dict[str, float] | None:
    path = os.path.join(workdir, "closed_loop", "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        r = json.load(f)
    return {t: v["success_rate"] for t, v in r["per_task"].items()}


def _artefacts(plan: Plan) -> dict[str, Any]:
    """Images worth a look: the quantizer's last reconstructions and its atlas, and one
    rollout video per task of each arm's first seed."""
    out: dict[str, Any] = {}
    images = os.path.join(plan.run("laq_all"), "images")
    if os.path.isdir(images):
        pngs = sorted(f for f in os.listdir(images) if f.endswith(".png"))
        if pngs:
            out["reconstructions"] = os.path.join(images, pngs[-1])
    eval_dir = os.path.join(plan.run("laq_all"), "eval")
    if os.path.isdir(eval_dir):
        atlases = sorted(f for f in os.listdir(eval_dir) if f.startswith("atlas"))
        if atlases:
            out["atlas"] = os.path.join(eval_dir, atlases[-1])
    rollouts = {}
    c = plan.cfg
    for arm in c.arms:
        groups = [0, 1] if arm in HALF_ARMS else [None]
        for g in groups:
            d = os.path.join(plan.finetune_run(arm, c.demo_ks[-1], c.seeds[0], g), "closed_loop")
            if os.path.isdir(d):
                vids = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".mp4"))
                rollouts.setdefault(arm, []).extend(vids)
    out["rollouts"] = rollouts
    return out


def _summarise(
    success: dict[str, dict[str, dict[str, dict[str, float]]]], tasks: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for arm, by_k in success.items():
        for k, by_seed in by_k.items():
            means = [float(np.mean(list(v.values()))) for v in by_seed.values()]
            summary.setdefault(arm, {})[k] = {
                "mean": float(np.mean(means)),
                "std": float(np.std(means)),
                "seeds": len(means),
                "per_task_mean": {
                    t: float(np.mean([v[t] for v in by_seed.values()])) for t in tasks
                },
            }
    return summary


# Arms each arm is set against, cell by cell: scratch for every arm; LAPA for the oracle
# latents (same pipeline, other codes); the half-task control for transfer.
PAIRED_BASELINES = ("scratch", "lapa", "scratch_half")
# And a variant against the arm it changes one thing of (same quantizer, same labels).
VARIANT_BASELINES = {"lapa_rvq16_first4": "lapa_rvq16"}


def sign_flip_p(diffs: list[float], draws: int = 1 << 16) -> float:
    """Two-sided p-value of a paired sign-flip (permutation) test of a zero mean: the
    share of sign assignments whose |sum| reaches the observed one. Exact up to 16
    pairs, a fixed-seed Monte Carlo beyond; no normality assumed, which few seeds of
    bounded success rates would not justify."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise ValueError("sign_flip_p needs at least one paired difference")
    if d.size <= 16:
        bits = (np.arange(1 << d.size)[:, None] >> np.arange(d.size)) & 1
        signs = 1.0 - 2.0 * bits
    else:
        signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(draws, d.size))
    observed = abs(d.sum())
    return float(np.mean(np.abs(signs @ d) >= observed - 1e-12))


def paired_differences(
    success: dict[str, dict[str, dict[str, dict[str, float]]]], tasks: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each arm against each baseline of PAIRED_BASELINES it shares cells with, and
    each arm of VARIANT_BASELINES against the arm it varies: the (k, seed) cells both
    finished differ in training and evaluation layouts only through the arm, so their
    differences of task-mean success cancel most of the seed-to-seed spread that the
    per-arm std includes."""

    def cell_means(arm: str) -> dict[tuple[str, str], float]:
        return {
            (k, s): float(np.mean([per_task[t] for t in tasks]))
            for k, by_seed in success.get(arm, {}).items()
            for s, per_task in by_seed.items()
        }

    out: dict[str, dict[str, dict[str, Any]]] = {}

    def pair(arm: str, base: str) -> None:
        mine, base_cells = cell_means(arm), cell_means(base)
        cells = sorted(set(mine) & set(base_cells), key=lambda c: (int(c[0]), int(c[1])))
        if not cells:
            return
        d = [mine[c] - base_cells[c] for c in cells]
        out.setdefault(base, {})[arm] = {
            "cells": [f"k={k} seed {s}" for k, s in cells],
            "differences": d,
            "mean": float(np.mean(d)),
            "std": float(np.std(d)),
            "above": sum(x > 1e-9 for x in d),
            "below": sum(x < -1e-9 for x in d),
            "p_sign_flip": sign_flip_p(d),
        }

    for base in PAIRED_BASELINES:
        for arm in success:
            if arm not in PAIRED_BASELINES[: PAIRED_BASELINES.index(base) + 1]:
                pair(arm, base)  # not itself, nor a pair already set the other way round
    for arm, base in VARIANT_BASELINES.items():
        if arm in success:
            pair(arm, base)
    return out


def _mse_lists(by_seed: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, Any]:
    """The held-out action errors per arm and k, in seed order (both halves for the
    half-task arms)."""
    return {
        arm: {k: [m for s in sorted(v, key=int) for m in v[s]] for k, v in by_k.items()}
        for arm, by_k in by_seed.items()
    }


def build_report(plan: Plan, runner: Runner) -> dict[str, Any]:
    c = plan.cfg
    success: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    mse_by_seed: dict[str, dict[str, dict[str, list[float]]]] = {}
    cell_jobs: dict[str, list[str]] = {}  # "arm/k/seed" -> its finetune and eval jobs
    jobs = {j.name: j for j in plan.jobs}
    for arm in c.arms:
        for k in c.demo_ks:
            for seed in c.seeds:
                groups = [0, 1] if arm in HALF_ARMS else [None]
                per_task: dict[str, float] = {}
                for g in groups:
                    run = plan.finetune_run(arm, k, seed, g)
                    name = os.path.basename(run)
                    cell_jobs.setdefault(f"{arm}/{k}/{seed}", []).extend(
                        [name, eval_job_name(name)]
                    )
                    got = _closed_loop(run)
                    if got is not None:
                        per_task.update(got)
                    # A finetune still running has logged an early, higher error: only
                    # finished runs count.
                    ft_job = jobs.get(name)
                    if ft_job is None or not runner.done(ft_job):
                        continue
                    mse = _last_eval(run).get("action_mse")
                    if mse is not None:
                        by_k = mse_by_seed.setdefault(arm, {}).setdefault(str(k), {})
                        by_k.setdefault(str(seed), []).append(mse)
                if len(per_task) == len(c.tasks):
                    success.setdefault(arm, {}).setdefault(str(k), {})[str(seed)] = {
                        t: per_task[t] for t in c.tasks
                    }
    summary = _summarise(success, list(c.tasks))
    cpu: dict[str, float] = {}
    wall: dict[str, float] = {}
    untimed: dict[str, list[str]] = {}
    job_seconds: dict[str, dict[str, Any]] = {}
    for job in plan.jobs:
        if runner.done(job):
            with open(runner.marker(job)) as f:
                rec = json.load(f)
            if rec.get("cpu_s") is None:  # adopted from a run made outside the driver
                untimed.setdefault(job.arm, []).append(job.name)
                continue
            cpu[job.arm] = cpu.get(job.arm, 0.0) + rec["cpu_s"]
            wall[job.arm] = wall.get(job.arm, 0.0) + rec["wall_s"]
            job_seconds[job.name] = {"arm": job.arm, "cpu_s": rec["cpu_s"], "wall_s": rec["wall_s"]}
    laq_reports = {}
    for tag in ("all", "g0", "g1", "rvq16"):
        eval_dir = os.path.join(plan.run(f"laq_{tag}"), "eval")
        if os.path.isdir(eval_dir):
            files = sorted(f for f in os.listdir(eval_dir) if f.endswith(".json"))
            if files:
                with open(os.path.join(eval_dir, files[-1])) as f:
                    laq_reports[tag] = json.load(f)
    pretraining = {
        name: _last_eval(plan.run(name))
        for name in ["latent_all", "latent_g0", "latent_g1", "latent_oracle", "latent_rvq16"]
        + ["latent_rvq16_first4"]
        + ["action_pre", "action_pre_clean"]
        + [f"idm_k{k}" for k in c.demo_ks]
        + [f"vpt_pre_k{k}" for k in c.demo_ks]
        if os.path.isdir(plan.run(name))
    }
    return {
        "config": c.to_dict(),
        "artefacts": _artefacts(plan),
        "summary": summary,
        "paired": paired_differences(success, list(c.tasks)),
        "success": success,
        "offline_action_mse": _mse_lists(mse_by_seed),
        "offline_action_mse_by_seed": mse_by_seed,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "untimed_jobs": untimed,  # finished, but not counted in the seconds above
        "job_seconds": job_seconds,
        "cell_jobs": cell_jobs,
        "laq_reports": laq_reports,
        "pretraining_reports": pretraining,
        "jobs_done": sum(runner.done(j) for j in plan.jobs),
        "jobs_total": len(plan.jobs),
    }


# What two workdirs whose results are merged may differ in: which cells each ran, and
# how many rendering processes did it (the episodes do not depend on that).
_FREE_KEYS = ("arms", "seeds", "demo_ks", "workers")

# Keys a protocol gained after some of its records were written, each with the value
# those records ran with (the default of its config file then): a record without one
# is the same protocol as a config that pins it to that value.
# The quantizer's 4 tokens on a 32-d latent were pinned when the laq default moved to
# 16 on 128. laq_rvq16 is lapa_rvq16's own stage, added with that arm: records from
# before it ran none of its jobs. Its value is the `full` variant's (a test keeps the
# two equal).
_ADDED_KEYS: dict[tuple[str, ...], Any] = {
    ("laq", "overrides", "codebook_ema"): 0.0,
    ("laq", "overrides", "model", "num_latent_tokens"): 4,
    ("laq", "overrides", "model", "latent_dim"): 32,
    ("laq_rvq16",): {
        "config": "experiments/laq.py:metaworld",
        "overrides": {
            "train": {"steps": 1200},
            "model": {"num_latent_tokens": 16, "latent_dim": 128, "decoder_mask_ratio": 0.5},
            "codebook_ema": 0.99,
        },
    },
}


def _protocol(config: dict[str, Any]) -> dict[str, Any]:
    """The part of an experiment config that two merged workdirs must share. It is the
    experiment's config, not the stage configs it resolves to: a stage file's default
    that changes between two runs is not seen here, so variants whose records are
    merged pin what they ran with (the `full` variant's laq overrides)."""
    out = json.loads(json.dumps({k: v for k, v in config.items() if k not in _FREE_KEYS}))
    for path, value in _ADDED_KEYS.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node.setdefault(path[-1], value)
    return out


def _recorded_mse_by_seed(recorded: dict[str, Any], source: str) -> dict[str, Any]:
    """Per seed from a report that has it; from an older report's per-(arm, k) lists when
    they line up with its finished cells (build_report listed them in seed order, one per
    half for the half-task arms)."""
    if "offline_action_mse_by_seed" in recorded:
        return recorded["offline_action_mse_by_seed"]
    out: dict[str, Any] = {}
    for arm, by_k in recorded.get("offline_action_mse", {}).items():
        per_cell = 2 if arm in HALF_ARMS else 1
        for k, values in by_k.items():
            seeds = sorted(recorded["success"].get(arm, {}).get(k, {}), key=int)
            if len(values) != per_cell * len(seeds):
                raise ValueError(
                    f"{source}: {len(values)} action errors for {arm} at k={k} but "
                    f"{len(seeds)} finished seeds; they cannot be told apart"
                )
            out.setdefault(arm, {})[k] = {
                s: values[i * per_cell : (i + 1) * per_cell] for i, s in enumerate(seeds)
            }
    return out


def _scalars_side_by_side(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, list[float]]:
    return {
        k: [float(mine[k]), float(theirs[k])]
        for k in mine
        if isinstance(mine[k], (int, float)) and isinstance(theirs.get(k), (int, float))
    }


def _merge_cpu_seconds(
    out: dict[str, Any], recorded: dict[str, Any], already: set[str]
) -> list[str]:
    """Adds `recorded`'s CPU and wall seconds to `out` (in place), each job once.

    A record's totals are added; this workdir's jobs that repeat what the record did move
    to `repeated_cpu_seconds`, and so do the record's own jobs that repeat what an earlier
    merged record (or this workdir) already counts: every lost workdir redid the datasets
    and the pretraining of its arms. `already` holds the cells `out` had before the
    merge. Returns the record's jobs that were moved."""
    recorded_cells = {
        f"{a}/{k}/{s}"
        for a, by_k in recorded["success"].items()
        for k, v in by_k.items()
        for s in v
    }
    recorded_arms = {a for a in recorded.get("cpu_seconds", {}) if a != SHARED}
    own_cell_jobs = {name: cell for cell, names in out["cell_jobs"].items() for name in names}
    cpu, wall = dict(out["cpu_seconds"]), dict(out["wall_seconds"])
    for arm, sec in recorded.get("cpu_seconds", {}).items():
        cpu[arm] = cpu.get(arm, 0.0) + sec
    for arm, sec in recorded.get("wall_seconds", {}).items():
        wall[arm] = wall.get(arm, 0.0) + sec
    repeated: dict[str, float] = out.get("repeated_cpu_seconds", {})
    moved: list[str] = out.get("repeated_jobs", [])
    counted = set(out.get("counted_jobs", out["job_seconds"]))
    # Arms whose jobs an earlier record counted without naming them (an older format).
    unnamed_arms = set(out.get("unnamed_arms", []))

    def move(rec: dict[str, Any]) -> None:
        repeated[rec["arm"]] = repeated.get(rec["arm"], 0.0) + rec["cpu_s"]
        cpu[rec["arm"]] -= rec["cpu_s"]
        wall[rec["arm"]] -= rec["wall_s"]

    # Cells this workdir's own jobs still count: for these the record's run counts instead.
    own_counted_cells = {
        own_cell_jobs[n] for n in out["job_seconds"] if n in own_cell_jobs and n not in moved
    }
    for name, rec in out["job_seconds"].items():
        cell = own_cell_jobs.get(name)
        if cell is None:
            is_repeat = rec["arm"] == SHARED or rec["arm"] in recorded_arms
        else:
            is_repeat = cell in recorded_cells
        if is_repeat and name not in moved:
            moved.append(name)
            counted.discard(name)  # the record's run of it counts instead
            move(rec)
    theirs_jobs = recorded.get("job_seconds")
    theirs_moved = []
    if theirs_jobs is None:
        unnamed_arms |= set(recorded.get("cpu_seconds", {}))
    else:
        theirs_cell = {
            name: cell for cell, names in recorded.get("cell_jobs", {}).items() for name in names
        }
        for name, rec in theirs_jobs.items():
            cell = theirs_cell.get(name)
            if cell is None:
                is_repeat = name in counted or rec["arm"] in unnamed_arms
            else:  # a cell an earlier record already counts
                is_repeat = cell in already and cell not in own_counted_cells
            if is_repeat:
                theirs_moved.append(name)
                move(rec)
            else:
                counted.add(name)
    out["cpu_seconds"], out["wall_seconds"] = cpu, wall
    out["repeated_cpu_seconds"], out["repeated_jobs"] = repeated, moved
    out["counted_jobs"], out["unnamed_arms"] = sorted(counted), sorted(unnamed_arms)
    return theirs_moved


def merge_recorded(report: dict[str, Any], recorded: dict[str, Any], source: str) -> dict[str, Any]:
    """Adds to `report` the (arm, k, seed) cells that `recorded` (the results.json of
    another workdir of the same protocol) finished and this one did not: a run resumed in
    a fresh workdir, its shared pretraining redone, reports every seed.

    A cell finished in both must agree. CPU seconds are the recorded ones plus this
    workdir's new cells; this workdir's repeats of jobs the recorded run had already
    done (datasets and pretraining of the arms it has) go to `repeated_cpu_seconds`, and
    `pretraining_this_vs_recorded` puts the repeats' report values beside the recorded
    ones (training on CPU is not bit-reproducible across runs)."""
    mine, theirs = _protocol(report["config"]), _protocol(recorded["config"])
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        raise ValueError(f"{source} is not the same protocol: its config differs in {differ}")
    if any(m["source"] == source for m in report.get("merged", [])):
        raise ValueError(f"{source} is already merged into this report")
    c = report["config"]
    arms, ks, seeds = set(c["arms"]), {str(k) for k in c["demo_ks"]}, {str(s) for s in c["seeds"]}
    out = json.loads(json.dumps(report))
    mse_theirs = _recorded_mse_by_seed(recorded, source)
    mse_mine = out["offline_action_mse_by_seed"]
    added, already = [], set()
    for arm, by_k in recorded["success"].items():
        for k, by_seed in by_k.items():
            for seed, per_task in by_seed.items():
                if arm not in arms or k not in ks or seed not in seeds:
                    continue
                have = out["success"].get(arm, {}).get(k, {}).get(seed)
                if have is not None:
                    if have != per_task:
                        raise ValueError(
                            f"{source}: {arm} k={k} seed {seed} differs from this workdir's"
                        )
                    already.add(f"{arm}/{k}/{seed}")
                    continue
                out["success"].setdefault(arm, {}).setdefault(k, {})[seed] = per_task
                mse = mse_theirs.get(arm, {}).get(k, {}).get(seed)
                if mse is not None:
                    mse_mine.setdefault(arm, {}).setdefault(k, {})[seed] = mse
                added.append(f"{arm}/{k}/{seed}")
    out["summary"] = _summarise(out["success"], list(c["tasks"]))
    out["paired"] = paired_differences(out["success"], list(c["tasks"]))
    out["offline_action_mse"] = _mse_lists(mse_mine)
    theirs_moved = _merge_cpu_seconds(out, recorded, already)
    for arm, names in recorded.get("untimed_jobs", {}).items():
        out["untimed_jobs"].setdefault(arm, []).extend(names)
    compared = {}
    for key in ("pretraining_reports", "laq_reports"):
        for name, theirs_r in recorded.get(key, {}).items():
            if name in out[key]:
                compared[name] = _scalars_side_by_side(out[key][name], theirs_r)
    out["pretraining_this_vs_recorded"] = compared
    out.setdefault("merged", []).append(
        {"source": source, "cells": sorted(added), "repeated_jobs": theirs_moved}
    )
    return out


def report_table(report: dict[str, Any]) -> str:
    c = report["config"]
    ks = [str(k) for k in c["demo_ks"]]
    lines = [
        "| arm | " + " | ".join(f"k={k}" for k in ks) + " | CPU hours |",
        "|---|" + "---|" * (len(ks) + 1),
    ]
    for arm in c["arms"]:
        cells = []
        for k in ks:
            s = report["summary"].get(arm, {}).get(k)
            if not s:
                cells.append("-")
            elif s["seeds"] == 1:  # no spread to show yet
                cells.append(f"{s['mean']:.2f} (1)")
            else:
                cells.append(f"{s['mean']:.2f} ± {s['std']:.2f} ({s['seeds']})")
        hours = report["cpu_seconds"].get(arm, 0.0) / 3600
        untimed = len(report.get("untimed_jobs", {}).get(arm, []))
        note = f" (+{untimed} untimed jobs)" if untimed else ""
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {hours:.2f}{note} |")
    lines.append(
        f"\nSuccess rate: mean over tasks, then mean ± std over seeds (number of seeds). "
        f"Shared jobs (datasets, tokenizer): {report['cpu_seconds'].get(SHARED, 0.0) / 3600:.2f} CPU hours."
    )
    for m in report.get("merged", []):
        lines.append(f"{len(m['cells'])} (arm, k, seed) results were recorded in {m['source']}.")
    lines += _paired_table(report)
    k = ks[-1]
    arms = [a for a in c["arms"] if k in report["summary"].get(a, {})]
    if arms:
        lines += ["", f"Per task at k={k} (mean over seeds):", ""]
        lines.append("| task | " + " | ".join(arms) + " |")
        lines.append("|---|" + "---|" * len(arms))
        for t in c["tasks"]:
            row = [f"{report['summary'][a][k]['per_task_mean'][t]:.2f}" for a in arms]
            lines.append(f"| {t} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _paired_table(report: dict[str, Any]) -> list[str]:
    paired = report.get("paired") or paired_differences(
        report["success"], list(report["config"]["tasks"])
    )
    if not paired:
        return []
    lines = [
        "",
        "Paired with a baseline over the (k, seed) cells both finished: mean and std of the "
        "differences in success, cells above / below, and the two-sided p-value of a "
        "sign-flip test.",
        "",
        "| arm | against | cells | mean difference | std | above / below | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for base, by_arm in paired.items():
        for arm, r in by_arm.items():
            lines.append(
                f"| {arm} | {base} | {len(r['cells'])} | {r['mean']:+.3f} | {r['std']:.3f} "
                f"| {r['above']} / {r['below']} | {r['p_sign_flip']:.3f} |"
            )
    return lines


def write_report(report: dict[str, Any], out_dir: str) -> list[str]:
    from lapa_jax import plots

    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "table.md")]
    with open(paths[0], "w") as f:
        json.dump(report, f, indent=2)
    with open(paths[1], "w") as f:
        f.write(report_table(report) + "\n")
    c, summary = report["config"], report["summary"]
    ks = [str(k) for k in c["demo_ks"]]
    arms = [a for a in c["arms"] if a in summary and all(k in summary[a] for k in ks)]
    if arms:
        paths.append(
            plots.lines(
                os.path.join(out_dir, "success_vs_k.png"),
                [float(k) for k in ks],
                {a: [summary[a][k]["mean"] for k in ks] for a in arms},
                title="Meta-World MT10: success vs demonstrations per task",
                xlabel="k",
                errors={a: [summary[a][k]["std"] for k in ks] for a in arms},
            )
        )
        paths.append(
            plots.grouped_bars(
                os.path.join(out_dir, "success_per_task.png"),
                [t.removesuffix("-v3") for t in c["tasks"]],
                {a: [summary[a][ks[-1]]["per_task_mean"][t] for t in c["tasks"]] for a in arms},
                title=f"success per task, k={ks[-1]}",
            )
        )
    for tag, r in report["laq_reports"].items():
        atlas = r.get("atlas")
        if atlas and os.path.isfile(atlas):
            dst = os.path.join(out_dir, f"laq_{tag}_atlas.png")
            shutil.copyfile(atlas, dst)
            paths.append(dst)
    return paths
