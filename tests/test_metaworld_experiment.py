"""The LAPA experiment's driver: the job plan wires every arm to the right data and
pretrained run, finished jobs are skipped, a failed job stops the run without a
record and runs again next time, and the report aggregates seeds and arms."""

from __future__ import annotations

import json
import os
import sys

import pytest

from experiments import metaworld_lapa
from lapa_jax import experiment_report
from lapa_jax import metaworld_experiment as mx


def flag(job: mx.Job, name: str) -> str:
    for a in job.argv:
        if a.startswith(f"--config.{name}="):
            return a.split("=", 1)[1]
    i = job.argv.index(f"--{name}")
    return job.argv[i + 1]


def test_plan_wires_arms_data_and_pretraining(tmp_path):
    cfg = metaworld_lapa.get_config("full")
    cfg.arms = mx.KNOWN_ARMS  # with the opt-in compute-matched controls
    plan = mx.Plan(cfg, str(tmp_path))
    jobs = {j.name: j for j in plan.jobs}
    # Finetuning jobs carry their step count, so a run of another length never counts.
    N = cfg.finetune.overrides.train.steps
    N_LONG = N + cfg.action_pretrain.overrides.train.steps
    assert len(jobs) == len(plan.jobs)  # names are unique
    order = [j.name for j in plan.jobs]
    # Dependencies come first: data before training, pretraining before finetuning.
    assert order.index("data_video") < order.index("laq_all") < order.index("label_all")
    assert order.index("label_all") < order.index("latent_all") < order.index(f"ft{N}_lapa_k5_s0")
    assert (
        order.index("idm_label_k10") < order.index("vpt_pre_k10") < order.index(f"ft{N}_vpt_k10_s2")
    )
    # The video set and the demonstrations come from different seed families; the
    # demonstration sets differ only in k (nested), the video subsets only in tasks.
    assert flag(jobs["data_video"], "seed") != flag(jobs["data_demos_k5"], "seed")
    assert flag(jobs["data_demos_k5"], "seed") == flag(jobs["data_demos_k25"], "seed")
    assert flag(jobs["data_video_g0"], "seed") == flag(jobs["data_video"], "seed")
    g0, g1 = (flag(jobs[f"data_video_g{g}"], "tasks").split(",") for g in (0, 1))
    assert not set(g0) & set(g1) and set(g0) | set(g1) == set(metaworld_lapa.MT10)
    # Each arm starts from its own pretraining and finetunes on its k demonstrations.
    assert flag(jobs[f"ft{N}_scratch_k10_s1"], "init_from") == ""
    assert flag(jobs[f"ft{N}_lapa_k10_s1"], "init_from") == plan.run("latent_all")
    assert flag(jobs[f"ft{N}_action_pretrained_k5_s0"], "init_from") == plan.run("action_pre")
    assert flag(jobs[f"ft{N}_vpt_k25_s2"], "init_from") == plan.run("vpt_pre_k25")
    assert flag(jobs[f"ft{N}_vpt_k25_s2"], "data.dir") == plan.data("demos_k25")
    assert flag(jobs[f"ft{N}_lapa_k10_s1"], "train.seed") == "1"
    # Transfer: pretrained on one half's videos, finetuned and evaluated on the other.
    t = jobs[f"ft{N}_lapa_transfer_k5_s0_g0"]
    assert flag(t, "init_from") == plan.run("latent_g1")
    assert flag(t, "data.dir") == plan.data("demos_k5_g0")
    assert flag(jobs[f"eval{N}_lapa_transfer_k5_s0_g0"], "tasks").split(",") == g0
    assert flag(jobs["latent_g1"], "data.dir") == plan.data("video_g1_latent")
    # Its control: the same half's demonstrations and evaluation, no pretraining.
    h = jobs[f"ft{N}_scratch_half_k5_s0_g0"]
    assert flag(h, "init_from") == "" and flag(h, "data.dir") == plan.data("demos_k5_g0")
    assert flag(jobs[f"eval{N}_scratch_half_k5_s0_g0"], "tasks").split(",") == g0
    # VPT pretrains on the video set with the IDM's labels, not its true actions.
    assert flag(jobs["vpt_pre_k5"], "data.action_labels") == plan.data("vpt_k5.npz")
    assert flag(jobs["vpt_pre_k5"], "data.dir") == plan.data("video")
    # The compute-matched scratch controls: as many steps as pretraining + finetuning.
    matched = cfg.finetune.overrides.train.steps + cfg.action_pretrain.overrides.train.steps
    assert (
        flag(jobs[f"ft{N_LONG}_scratch_long_k5_s0"], "train.steps") == str(matched) == str(N_LONG)
    )
    assert flag(jobs[f"ft{N_LONG}_scratch_half_long_k25_s2_g1"], "train.steps") == str(matched)
    assert flag(jobs[f"ft{N_LONG}_scratch_half_long_k25_s2_g1"], "data.dir") == plan.data(
        "demos_k25_g1"
    )
    assert flag(jobs[f"ft{N_LONG}_scratch_long_k5_s0"], "init_from") == ""
    assert flag(jobs[f"ft{N}_scratch_k5_s0"], "train.steps") == str(
        cfg.finetune.overrides.train.steps
    )
    # ... and the clean-action control on the expert's noise-free actions of the same set.
    clean = plan.data("expert_clean.npz")
    assert flag(jobs["expert_labels"], "out") == clean
    assert flag(jobs["action_pre_clean"], "data.action_labels") == clean
    assert order.index("expert_labels") < order.index("action_pre_clean")
    assert flag(jobs[f"ft{N}_action_pretrained_clean_k10_s1"], "init_from") == plan.run(
        "action_pre_clean"
    )
    # The oracle diagnostic: latent pretraining on the video set's true actions, binned at
    # the quantizer's frame gap, read through data.latent_labels.
    from experiments import laq as laq_experiment

    oracle = plan.data("oracle_latents.npz")
    assert flag(jobs["oracle_labels"], "out") == oracle
    assert flag(jobs["oracle_labels"], "src") == plan.data("video")
    assert int(flag(jobs["oracle_labels"], "frame_gap")) == (
        laq_experiment.get_config("metaworld").data.frame_gap
    )
    assert flag(jobs["latent_oracle"], "data.latent_labels") == oracle
    assert flag(jobs["latent_oracle"], "data.spec") == "metaworld"
    assert flag(jobs[f"ft{N}_lapa_oracle_k25_s1"], "init_from") == plan.run("latent_oracle")
    assert order.index("oracle_labels") < order.index("latent_oracle")
    assert "lapa_oracle" not in metaworld_lapa.get_config("full").arms  # opt-in
    # The full run's quantizers were trained before the laq default masked its decoder's
    # x_t patches: every quantizer job pins the recipe that ran, whatever the default is now.
    laq_jobs = [j for n, j in jobs.items() if n.startswith("laq_") and "report" not in n]
    assert {j.name for j in laq_jobs} == {"laq_all", "laq_g0", "laq_g1", "laq_rvq16"}
    pinned = [j for j in laq_jobs if j.name != "laq_rvq16"]
    assert all(flag(j, "model.decoder_mask_ratio") == "0.0" for j in pinned)
    assert all(flag(j, "model.num_latent_tokens") == "4" for j in pinned)
    # lapa_rvq16: the same chain on the same videos with issue 8's quantizer, its labels
    # in their own dataset (not lapa's), its policy from its own latent pretraining.
    q = jobs["laq_rvq16"]
    assert flag(q, "data.dir") == plan.data("video")
    assert (flag(q, "model.num_latent_tokens"), flag(q, "model.latent_dim")) == ("16", "128")
    assert (flag(q, "model.decoder_mask_ratio"), flag(q, "codebook_ema")) == ("0.5", "0.99")
    assert flag(jobs["label_rvq16"], "laq_workdir") == plan.run("laq_rvq16")
    assert flag(jobs["label_rvq16"], "dst") == plan.data("video_latent_rvq16")
    assert flag(jobs["label_all"], "dst") == plan.data("video_latent")
    assert flag(jobs["latent_rvq16"], "data.dir") == plan.data("video_latent_rvq16")
    assert flag(jobs[f"ft{N}_lapa_rvq16_k10_s2"], "init_from") == plan.run("latent_rvq16")
    assert order.index("label_rvq16") < order.index("latent_rvq16")
    assert order.index("latent_rvq16") < order.index(f"ft{N}_lapa_rvq16_k5_s0")
    assert "lapa_rvq16" not in metaworld_lapa.get_config("full").arms  # opt-in
    # lapa_rvq16_first4: the same quantizer and labels (one job each), latent pretraining on
    # the first 4 of their 16 tokens only.
    assert sum(n == "label_rvq16" for n in order) == 1
    first4 = jobs["latent_rvq16_first4"]
    assert flag(first4, "data.dir") == plan.data("video_latent_rvq16")
    assert flag(first4, "data.latent_tokens") == str(mx.RVQ16_FIRST_STAGES) == "4"
    assert "--config.data.latent_tokens=4" not in jobs["latent_rvq16"].argv
    assert flag(jobs[f"ft{N}_lapa_rvq16_first4_k25_s1"], "init_from") == plan.run(
        "latent_rvq16_first4"
    )
    assert order.index("label_rvq16") < order.index("latent_rvq16_first4")
    # Evaluation: every seed's own layouts, the same for every arm.
    assert (
        flag(jobs[f"eval{N}_lapa_k5_s2"], "seed")
        == flag(jobs[f"eval{N}_scratch_k5_s2"], "seed")
        == "2"
    )
    # lapa_transfer and scratch_half: one policy per half.
    n_ft = len(cfg.demo_ks) * len(cfg.seeds) * (len(cfg.arms) + len(mx.HALF_ARMS))
    ft_n = [n for n in order if n.startswith(f"ft{N}_")]
    ft_long = [n for n in order if n.startswith(f"ft{N_LONG}_")]
    assert len(ft_n) + len(ft_long) == n_ft
    assert len(ft_long) == len(cfg.demo_ks) * len(cfg.seeds) * 3  # scratch_long + 2 halves
    assert sum(n.startswith((f"eval{N}_", f"eval{N_LONG}_")) for n in order) == n_ft
    # Seed-major: every k's first seed is finetuned before any second seed.
    ft = [n for n in order if n.startswith((f"ft{N}_", f"ft{N_LONG}_"))]
    last_s0 = max(i for i, n in enumerate(ft) if "_s0" in n)
    first_s1 = min(i for i, n in enumerate(ft) if "_s1" in n)
    assert last_s0 < first_s1 and f"ft{N}_scratch_k{cfg.demo_ks[-1]}_s0" in ft[:first_s1]


def test_plan_keeps_only_the_jobs_its_arms_need(tmp_path):
    cfg = metaworld_lapa.get_config("demo")
    N = cfg.finetune.overrides.train.steps
    jobs = mx.Plan(cfg, str(tmp_path)).jobs
    names = [j.name for j in jobs]
    assert not any(
        n.startswith(("idm", "vpt", "action_pre", "laq_g", "data_video_g")) for n in names
    )
    assert "latent_all" in names and f"ft{N}_scratch_k10_s0" in names
    # The demo's stage 2 learns the first 4 of its quantizer's 16 stages.
    (latent,) = [j for j in jobs if j.name == "latent_all"]
    assert "--config.data.latent_tokens=4" in latent.argv
    cfg.arms = ["scratch", "scratch_half"]  # the halves' demonstrations, not their videos
    names = [j.name for j in mx.Plan(cfg, str(tmp_path)).jobs]
    assert "data_demos_k10_g1" in names and f"ft{N}_scratch_half_k10_s0_g1" in names
    assert not any(n.startswith(("data_video", "laq", "latent")) for n in names)
    cfg.arms = ["lapa_transfer"]  # the halves' videos only, not the whole video set
    names = [j.name for j in mx.Plan(cfg, str(tmp_path)).jobs]
    assert "data_video_g0" in names and "data_video_g1" in names and "latent_g1" in names
    assert "data_video" not in names
    cfg.arms = ["lapa_rvq16_first4"]  # lapa_rvq16's quantizer and labels, not its stage 2
    names = [j.name for j in mx.Plan(cfg, str(tmp_path)).jobs]
    assert {"laq_rvq16", "label_rvq16", "latent_rvq16_first4"} <= set(names)
    assert "latent_rvq16" not in names and "laq_all" not in names
    cfg.arms = ["scratch", "diffusion"]
    with pytest.raises(ValueError, match="unknown arms"):
        mx.Plan(cfg, str(tmp_path))


def fake_job(name: str, arm: str, code: str) -> mx.Job:
    return mx.Job(name, arm, ["-c", code])


def test_runner_skips_finished_jobs_and_stops_on_failure(tmp_path):
    runner = mx.Runner(str(tmp_path), log=lambda m: None)
    counter = tmp_path / "count.txt"
    bump = f"p={str(counter)!r}; open(p, 'a').write('x')"
    flag_file = tmp_path / "allow"
    gate = f"import os, sys; sys.exit(0 if os.path.exists({str(flag_file)!r}) else 3)"
    jobs = [fake_job("a", "lapa", bump), fake_job("b", "lapa", gate), fake_job("c", "shared", bump)]
    with pytest.raises(mx.JobFailed, match="job b failed \\(exit 3\\)"):
        runner.run(jobs)
    assert runner.done(jobs[0]) and not runner.done(jobs[1]) and not runner.done(jobs[2])
    flag_file.write_text("")
    runner.run(jobs)  # a is not run again; b and c now run
    assert counter.read_text() == "xx"
    with open(runner.marker(jobs[2])) as f:
        rec = json.load(f)
    assert rec["arm"] == "shared" and rec["wall_s"] >= 0 and rec["cpu_s"] >= 0
    assert rec["argv"] == ["-c", bump]


def write_closed_loop(run: str, per_task: dict[str, float]) -> None:
    os.makedirs(os.path.join(run, "closed_loop"), exist_ok=True)
    with open(os.path.join(run, "closed_loop", "results.json"), "w") as f:
        json.dump({"per_task": {t: {"success_rate": v} for t, v in per_task.items()}}, f)


def test_report_aggregates_tasks_then_seeds(tmp_path):
    cfg = metaworld_lapa.get_config("tiny")
    cfg.arms, cfg.seeds, cfg.demo_ks = ["scratch", "lapa_transfer"], [0, 1], [1, 2]
    plan = mx.Plan(cfg, str(tmp_path))
    runner = mx.Runner(str(tmp_path), log=lambda m: None)
    t0, t1 = cfg.tasks
    for k in (1, 2):
        write_closed_loop(plan.finetune_run("scratch", k, 0), {t0: 1.0, t1: 0.0})
        write_closed_loop(plan.finetune_run("scratch", k, 1), {t0: 0.5, t1: 0.5})
        # Transfer: each half evaluated in its own run; the report joins them.
        write_closed_loop(plan.finetune_run("lapa_transfer", k, 0, 0), {t0: 0.2})
        write_closed_loop(plan.finetune_run("lapa_transfer", k, 0, 1), {t1: 0.4})
    report = experiment_report.build_report(plan, runner)
    s = report["summary"]["scratch"]["1"]
    assert s["mean"] == pytest.approx(0.5) and s["std"] == pytest.approx(0.0) and s["seeds"] == 2
    assert s["per_task_mean"] == {t0: 0.75, t1: 0.25}
    lt = report["summary"]["lapa_transfer"]["2"]
    assert lt["seeds"] == 1 and lt["mean"] == pytest.approx(0.3)  # seed 1 missing: not counted
    paths = experiment_report.write_report(report, str(tmp_path / "out"))
    assert {os.path.basename(p) for p in paths} >= {"results.json", "table.md", "success_vs_k.png"}
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| scratch | 0.50 ± 0.00 (2) | 0.50 ± 0.00 (2) |" in table
    assert "| lapa_transfer | 0.30 (1) | 0.30 (1) |" in table  # one seed: no spread shown
    # Paired only over the cells both arms finished: seed 0 at k=1 and k=2.
    pair = report["paired"]["scratch"]["lapa_transfer"]
    assert pair["cells"] == ["k=1 seed 0", "k=2 seed 0"]
    assert pair["differences"] == pytest.approx([-0.2, -0.2])
    assert (pair["above"], pair["below"], pair["p_sign_flip"]) == (0, 2, 0.5)
    assert "| lapa_transfer | scratch | 2 | -0.200 | 0.000 | 0 / 2 | 0.500 |" in table


def test_sign_flip_p_counts_sign_assignments():
    # Three equal gains: only all-plus and all-minus reach |0.3| of the 8 assignments.
    assert experiment_report.sign_flip_p([0.1, 0.1, 0.1]) == pytest.approx(0.25)
    assert experiment_report.sign_flip_p([0.1, -0.1]) == pytest.approx(1.0)
    # ±0.3 ±0.1 ±0.1: six of the eight sums reach |0.3|.
    assert experiment_report.sign_flip_p([0.3, 0.1, -0.1]) == pytest.approx(0.75)
    # 20 pairs: the Monte Carlo branch; all gains is a 2 / 2^20 event.
    assert experiment_report.sign_flip_p([0.05] * 20) < 1e-3
    assert experiment_report.sign_flip_p([0.05, -0.05] * 10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one"):
        experiment_report.sign_flip_p([])


def test_paired_differences_sets_oracle_against_lapa():
    tasks = ["a", "b"]
    success = {
        "scratch": {"5": {"0": {"a": 0.5, "b": 0.5}, "1": {"a": 0.5, "b": 0.5}}},
        "lapa": {"5": {"0": {"a": 1.0, "b": 0.4}, "1": {"a": 0.4, "b": 0.4}}},
        "lapa_oracle": {"5": {"1": {"a": 0.6, "b": 0.6}}},
    }
    paired = experiment_report.paired_differences(success, tasks)
    assert set(paired) == {"scratch", "lapa"}  # no scratch_half ran
    lapa = paired["scratch"]["lapa"]
    assert lapa["differences"] == pytest.approx([0.2, -0.1])
    assert lapa["mean"] == pytest.approx(0.05) and (lapa["above"], lapa["below"]) == (1, 1)
    oracle = paired["lapa"]["lapa_oracle"]
    assert oracle["cells"] == ["k=5 seed 1"] and oracle["differences"] == pytest.approx([0.2])
    assert "scratch" not in paired["lapa"]  # already set the other way round
    assert "lapa_rvq16" not in paired  # no variant of it ran


def test_paired_differences_sets_a_variant_against_the_arm_it_varies():
    tasks = ["a"]
    success = {
        "scratch": {"5": {"0": {"a": 0.5}, "1": {"a": 0.5}}},
        "lapa_rvq16": {"5": {"0": {"a": 0.3}, "1": {"a": 0.6}}},
        "lapa_rvq16_first4": {"5": {"0": {"a": 0.4}, "1": {"a": 0.7}, "2": {"a": 0.9}}},
    }
    paired = experiment_report.paired_differences(success, tasks)
    variant = paired["lapa_rvq16"]["lapa_rvq16_first4"]
    assert variant["cells"] == ["k=5 seed 0", "k=5 seed 1"]  # seed 2 has no lapa_rvq16 cell
    assert variant["differences"] == pytest.approx([0.1, 0.1])
    assert variant["above"] == 2 and variant["p_sign_flip"] == pytest.approx(0.5)
    assert set(paired["lapa_rvq16"]) == {"lapa_rvq16_first4"}  # not scratch against it


def test_report_counts_action_error_only_of_finished_finetunes(tmp_path):
    cfg = metaworld_lapa.get_config("tiny")
    cfg.arms, cfg.seeds, cfg.demo_ks = ["scratch"], [0, 1], [1]
    plan = mx.Plan(cfg, str(tmp_path))
    runner = mx.Runner(str(tmp_path), log=lambda m: None)
    for seed, mse in ((0, 0.1), (1, 0.3)):  # seed 1 is still finetuning
        run = plan.finetune_run("scratch", 1, seed)
        os.makedirs(run)
        with open(os.path.join(run, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 2, "eval_action_mse": mse}) + "\n")
    finished = next(
        j for j in plan.jobs if j.name == os.path.basename(plan.finetune_run("scratch", 1, 0))
    )
    os.makedirs(os.path.dirname(runner.marker(finished)), exist_ok=True)
    with open(runner.marker(finished), "w") as f:
        json.dump({"name": finished.name, "cpu_s": 1.0, "wall_s": 1.0}, f)
    report = experiment_report.build_report(plan, runner)
    assert report["offline_action_mse"] == {"scratch": {"1": [0.1]}}


def finish(plan: mx.Plan, runner: mx.Runner, name: str, cpu_s: float) -> None:
    job = next(j for j in plan.jobs if j.name == name)
    os.makedirs(os.path.dirname(runner.marker(job)), exist_ok=True)
    with open(runner.marker(job), "w") as f:
        json.dump({"name": name, "arm": job.arm, "cpu_s": cpu_s, "wall_s": cpu_s}, f)


def write_eval(run: str, **metrics: float) -> None:
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 2, **{f"eval_{k}": v for k, v in metrics.items()}}) + "\n")


def finish_cell(plan: mx.Plan, runner: mx.Runner, k: int, seed: int, rate: float, mse: float):
    run = plan.finetune_run("scratch", k, seed)
    t0, t1 = plan.cfg.tasks
    write_closed_loop(run, {t0: rate, t1: rate})
    write_eval(run, action_mse=mse)
    name = os.path.basename(run)
    finish(plan, runner, name, 10.0)
    finish(plan, runner, mx.eval_job_name(name), 5.0)


def test_merge_recorded_joins_seeds_of_two_workdirs(tmp_path):
    cfg = metaworld_lapa.get_config("tiny")
    cfg.arms, cfg.seeds, cfg.demo_ks = ("scratch",), (0, 1, 2), (1,)
    # The first workdir finished seeds 0 and 1, then was lost; its report was kept.
    cfg_a = metaworld_lapa.get_config("tiny")
    cfg_a.arms, cfg_a.seeds, cfg_a.demo_ks = ("scratch",), (0, 1), (1,)
    plan_a, runner_a = mx.Plan(cfg_a, str(tmp_path / "a")), mx.Runner(str(tmp_path / "a"))
    finish(plan_a, runner_a, "data_demos_k1", 100.0)
    write_eval(plan_a.run("latent_all"), accuracy=0.4)
    finish_cell(plan_a, runner_a, 1, 0, 1.0, 0.1)
    finish_cell(plan_a, runner_a, 1, 1, 0.5, 0.3)
    recorded = experiment_report.build_report(plan_a, runner_a)
    recorded = json.loads(json.dumps(recorded))  # as read back from results.json
    # The fresh workdir redid the shared jobs and ran seed 2 only.
    plan_b, runner_b = mx.Plan(cfg, str(tmp_path / "b")), mx.Runner(str(tmp_path / "b"))
    finish(plan_b, runner_b, "data_demos_k1", 90.0)
    write_eval(plan_b.run("latent_all"), accuracy=0.5)  # redone pretraining differs a bit
    finish_cell(plan_b, runner_b, 1, 2, 0.0, 0.5)
    mine = experiment_report.build_report(plan_b, runner_b)
    assert mine["summary"]["scratch"]["1"]["seeds"] == 1
    merged = experiment_report.merge_recorded(mine, recorded, "a/results.json")
    s = merged["summary"]["scratch"]["1"]
    assert s["seeds"] == 3 and s["mean"] == pytest.approx(0.5)
    assert merged["offline_action_mse"] == {"scratch": {"1": [0.1, 0.3, 0.5]}}
    assert merged["merged"] == [
        {"source": "a/results.json", "cells": ["scratch/1/0", "scratch/1/1"], "repeated_jobs": []}
    ]
    # CPU: the recorded run's, plus seed 2's jobs; the redone dataset is a repeat.
    assert merged["cpu_seconds"] == {"shared": 100.0, "scratch": 45.0}
    assert merged["repeated_cpu_seconds"] == {"shared": 90.0}
    assert merged["pretraining_this_vs_recorded"] == {"latent_all": {"accuracy": [0.5, 0.4]}}
    assert "2 (arm, k, seed) results were recorded in a/results.json" in (
        experiment_report.report_table(merged)
    )
    # The same record is not merged twice.
    with pytest.raises(ValueError, match="already merged"):
        experiment_report.merge_recorded(merged, recorded, "a/results.json")
    # Two records (two lost workdirs) both count, each job once: the second redid the
    # dataset and seed 0's cell, which move out with this workdir's repeat of the dataset.
    first, second = json.loads(json.dumps(recorded)), json.loads(json.dumps(recorded))
    del first["success"]["scratch"]["1"]["1"]
    first["offline_action_mse_by_seed"]["scratch"]["1"] = {"0": [0.1]}
    first["job_seconds"] = {n: r for n, r in recorded["job_seconds"].items() if "_s1" not in n}
    first["cpu_seconds"] = first["wall_seconds"] = {"shared": 100.0, "scratch": 15.0}
    second["job_seconds"]["data_demos_k1"] = {"arm": "shared", "cpu_s": 60.0, "wall_s": 60.0}
    second["cpu_seconds"] = second["wall_seconds"] = {"shared": 60.0, "scratch": 30.0}
    twice = experiment_report.merge_recorded(mine, first, "first")
    twice = experiment_report.merge_recorded(twice, second, "second")
    assert twice["summary"] == merged["summary"]
    assert twice["cpu_seconds"] == {"shared": 100.0, "scratch": 45.0}
    assert twice["repeated_cpu_seconds"] == {"shared": 150.0, "scratch": 15.0}
    assert [m["cells"] for m in twice["merged"]] == [["scratch/1/0"], ["scratch/1/1"]]
    assert sorted(twice["merged"][1]["repeated_jobs"]) == sorted(
        ["data_demos_k1", *recorded["cell_jobs"]["scratch/1/0"]]
    )
    # A record of the older format names no jobs: a later record's jobs of its arms
    # count as repeats, since which of them it ran is not known.
    unnamed = {k: v for k, v in first.items() if k not in ("job_seconds", "cell_jobs")}
    both = experiment_report.merge_recorded(mine, unnamed, "unnamed")
    both = experiment_report.merge_recorded(both, second, "second")
    assert both["cpu_seconds"] == twice["cpu_seconds"]
    # An older report without per-seed errors is attributed by seed order.
    old = {k: v for k, v in recorded.items() if k != "offline_action_mse_by_seed"}
    assert (
        experiment_report.merge_recorded(mine, old, "old")["offline_action_mse"]
        == (merged["offline_action_mse"])
    )
    # Refused: a cell both finished with different results, another protocol, and
    # errors that cannot be told apart by seed.
    clash = json.loads(json.dumps(recorded))
    clash["success"]["scratch"]["1"]["2"] = clash["success"]["scratch"]["1"]["0"]
    with pytest.raises(ValueError, match="scratch k=1 seed 2 differs"):
        experiment_report.merge_recorded(mine, clash, "clash")
    other = json.loads(json.dumps(recorded))
    other["config"]["eval_episodes"] = 50
    with pytest.raises(ValueError, match="differs in \\['eval_episodes'\\]"):
        experiment_report.merge_recorded(mine, other, "other")
    old["offline_action_mse"] = {"scratch": {"1": [0.1]}}
    with pytest.raises(ValueError, match="1 action errors for scratch at k=1 but 2"):
        experiment_report.merge_recorded(mine, old, "old")
    # A record from before the protocol pinned the quantizer's codebook_ema ran with the
    # default of then, 0: the same protocol as a pin to 0, not as one to 0.99.
    pinned = json.loads(json.dumps(mine))
    pinned["config"]["laq"]["overrides"]["codebook_ema"] = 0.0
    assert "codebook_ema" not in recorded["config"]["laq"]["overrides"]
    assert experiment_report.merge_recorded(pinned, recorded, "a")["summary"] == merged["summary"]
    pinned["config"]["laq"]["overrides"]["codebook_ema"] = 0.99
    with pytest.raises(ValueError, match="differs in \\['laq'\\]"):
        experiment_report.merge_recorded(pinned, recorded, "a")
    # A record from before lapa_rvq16 has no laq_rvq16 stage: the same protocol as the
    # full variant's, but not as another quantizer for that arm.
    full = metaworld_lapa.get_config("full").to_dict()
    before = {k: v for k, v in full.items() if k != "laq_rvq16"}
    protocol = experiment_report._protocol
    assert protocol(before) == protocol(full)
    # ... nor did it pin the quantizer's 4 tokens on a 32-d latent, the default of then.
    del before["laq"]["overrides"]["model"]["num_latent_tokens"]
    del before["laq"]["overrides"]["model"]["latent_dim"]
    assert protocol(before) == protocol(full)
    longer = json.loads(json.dumps(full))
    longer["laq_rvq16"]["overrides"]["train"]["steps"] = 2400
    assert protocol(before) != protocol(longer)


def test_dry_run_lists_every_job(tmp_path):
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "lapa_jax.metaworld_experiment", "--config",
         "experiments/metaworld_lapa.py:demo", "--workdir", str(tmp_path), "--dry_run"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    plan = mx.Plan(metaworld_lapa.get_config("demo"), str(tmp_path))
    assert len(out.strip().splitlines()) == len(plan.jobs)
    assert all(line.startswith("todo") for line in out.strip().splitlines())
    # A subset of the arms from the command line (how a partial run is prioritised).
    out = subprocess.run(
        [sys.executable, "-m", "lapa_jax.metaworld_experiment", "--config",
         "experiments/metaworld_lapa.py:full", "--workdir", str(tmp_path), "--dry_run",
         "--config.arms=('scratch', 'vpt')"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    arms = {line.split()[1] for line in out.strip().splitlines()}
    assert arms == {"shared", "scratch", "vpt"}
