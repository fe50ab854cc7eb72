"""Runs the LAPA experiment on Meta-World (experiments/metaworld_lapa.py): every arm, k
and seed, then the report.

    python -m lapa_jax.metaworld_experiment --config experiments/metaworld_lapa.py:full \
        --workdir runs/metaworld_lapa [--results results/metaworld_lapa] [--dry_run] \
        [--merge_results results/metaworld_lapa/ft2000_partial/results.json]

The experiment is a list of jobs in dependency order, each one command of this
project (dataset generation, training, labelling, evaluation) run in a subprocess.
A job that finishes writes WORKDIR/jobs/NAME.json (its command, wall and CPU seconds);
a re-run skips finished jobs, and the job that was interrupted picks up where it
stopped (training resumes from its checkpoint, labelling from its finished chunks,
datasets appear only when complete). A failing job stops the run with its log's tail.
The report (lapa_jax.experiment_report: results.json, table.md, success_vs_k.png,
success_per_task.png) is rebuilt from the finished jobs at the end, or alone with
--report_only. --merge_results adds the results an earlier workdir recorded (its
results.json), so a run continued in a fresh workdir, e.g. with --config.seeds="(2,)",
reports every seed; see experiment_report.merge_recorded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

SHARED = "shared"


@dataclasses.dataclass
class Job:
    name: str  # unique, file-safe
    arm: str  # the CPU-time account: an arm, or "shared"
    argv: list[str]  # arguments after `python`
    description: str = ""


class JobFailed(RuntimeError):
    pass


def eval_job_name(finetune_name: str) -> str:
    """The closed-loop evaluation job of a finetuning job (ft2000_... -> eval2000_...)."""
    return f"eval{finetune_name[2:]}"


def _overrides(d: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested overrides as --config.a.b=value flags."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _overrides(v, f"{prefix}{k}.")
        else:
            out.append(f"--config.{prefix}{k}={v}")
    return out


KNOWN_ARMS = (
    "scratch",
    "scratch_long",
    "lapa",
    "action_pretrained",
    "action_pretrained_clean",
    "lapa_transfer",
    "scratch_half",
    "scratch_half_long",
    "vpt",
    "lapa_oracle",
    "lapa_rvq16",
    "lapa_rvq16_first4",
)
# Arms whose policies are finetuned and evaluated on each half of the tasks in turn.
HALF_ARMS = ("lapa_transfer", "scratch_half", "scratch_half_long")
# Scratch controls finetuned for pretraining + finetuning steps (Plan.finetune_steps).
LONG_ARMS = ("scratch_long", "scratch_half_long")
# Controls and diagnostics that a run includes only when --config.arms names them.
OPT_IN_ARMS = (*LONG_ARMS, "lapa_oracle", "lapa_rvq16", "lapa_rvq16_first4")
# lapa_rvq16_first4 pretrains on the first stages of laq_rvq16's 16 residual stages only,
# as many as lapa's quantizer has tokens: the coarse motion, the part stage 2 predicts.
RVQ16_FIRST_STAGES = 4


class Plan:
    """The experiment's jobs and where every artefact lives."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str):
        self.cfg, self.w = cfg, os.path.abspath(workdir)
        unknown = set(cfg.arms) - set(KNOWN_ARMS)
        if unknown:
            raise ValueError(f"unknown arms {sorted(unknown)}")
        for arm in set(cfg.arms) & set(HALF_ARMS):
            if len(cfg.tasks) < 2:
                raise ValueError(f"{arm} needs at least 2 tasks (it works on halves of them)")
        if not cfg.demo_ks or min(cfg.demo_ks) < 1 or not cfg.seeds:
            raise ValueError(
                f"demo_ks must be >= 1 and seeds non-empty, got {cfg.demo_ks}, {cfg.seeds}"
            )
        self.groups = [list(cfg.tasks[0::2]), list(cfg.tasks[1::2])]
        self.jobs: list[Job] = []
        self._build()

    # ---- paths ---------------------------------------------------------------------

    def data(self, name: str) -> str:
        return os.path.join(self.w, "data", name)

    def run(self, name: str) -> str:
        return os.path.join(self.w, "runs", name)

    @property
    def tokenizer(self) -> str:
        return os.path.join(self.w, "tokenizer.model")

    def finetune_steps(self, arm: str) -> int:
        """The compute-matched *_long controls train from scratch for as many steps as a
        pretrained arm sees in all (pretraining + finetuning); every other arm finetunes
        for the configured steps."""
        steps = int(self.cfg.finetune.overrides.train.steps)
        if arm in LONG_ARMS:
            steps += int(self.cfg.action_pretrain.overrides.train.steps)
        return steps

    def finetune_run(self, arm: str, k: int, seed: int, group: int | None = None) -> str:
        """Named with the step count, so a run of another finetuning length is never
        taken for this one (the job markers are keyed by these names)."""
        g = "" if group is None else f"_g{group}"
        return self.run(f"ft{self.finetune_steps(arm)}_{arm}_k{k}_s{seed}{g}")

    # ---- jobs ----------------------------------------------------------------------

    def _add(self, name: str, arm: str, argv: list[str], description: str = "") -> None:
        self.jobs.append(Job(name, arm, argv, description))

    def _dataset(self, name: str, tasks: Sequence[str], episodes: int, val: int, seed: int) -> None:
        self._add(
            f"data_{name}",
            SHARED,
            [
                "-m", "data_pipelines.metaworld_rlds", "--out", self.data(name),
                "--tasks", ",".join(tasks), "--episodes_per_task", str(episodes),
                "--val_episodes_per_task", str(val), "--seed", str(seed),
                "--workers", str(self.cfg.workers),
            ],
            f"{len(tasks)} tasks x {episodes} episodes",
        )  # fmt: skip

    def _train(self, name: str, arm: str, stage: ml_collections.ConfigDict, **extra: Any) -> None:
        argv = ["-m", "lapa_jax.train", "--config", stage.config, "--workdir", self.run(name)]
        argv += ["--cpu_devices", str(self.cfg.cpu_devices)]
        flags = _overrides(stage.overrides.to_dict()) + [
            f"--config.{k}={v}" for k, v in extra.items()
        ]
        self._add(name, arm, argv + flags)

    def _vlm_data(self, data: str, spec: str = "metaworld") -> dict[str, Any]:
        return {"data.dir": data, "data.spec": spec, "data.tokenizer": self.tokenizer}

    def _latent_chain(
        self,
        tag: str,
        video: str,
        arm: str,
        laq: ml_collections.ConfigDict | None = None,
        labelled_name: str | None = None,
    ) -> None:
        """Quantizer on `video` (the `laq` stage, c.laq unless given), its labels into
        `labelled_name` (VIDEO_latent unless given), latent pretraining: the LAPA
        pretraining."""
        labelled = self._labels_chain(tag, video, arm, laq, labelled_name)
        self._latent_pretrain(tag, arm, labelled)

    def _labels_chain(
        self,
        tag: str,
        video: str,
        arm: str,
        laq: ml_collections.ConfigDict | None = None,
        labelled_name: str | None = None,
    ) -> str:
        """The quantizer `laq_TAG`, its report and its labels of `video`; returns the
        labelled dataset's path."""
        c = self.cfg
        laq = c.laq if laq is None else laq
        self._train(f"laq_{tag}", arm, laq, **{"data.dir": self.data(video)})
        self._add(
            f"laq_report_{tag}",
            arm,
            [
                "-m",
                "lapa_jax.evaluate_laq",
                "--workdir",
                self.run(f"laq_{tag}"),
                "--max_pairs",
                "1000",
            ],
        )
        labelled = self.data(labelled_name or f"{video}_latent")
        self._add(
            f"label_{tag}",
            arm,
            [
                "-m", "data_pipelines.label_latent_actions", "--src", self.data(video),
                "--spec", "metaworld", "--laq_workdir", self.run(f"laq_{tag}"), "--dst", labelled,
                "--cpu_devices", str(c.cpu_devices),
            ],
        )  # fmt: skip
        return labelled

    def _latent_pretrain(self, tag: str, arm: str, labelled: str, **extra: Any) -> None:
        spec = os.path.join(labelled, "lapa_spec.json")
        self._train(
            f"latent_{tag}", arm, self.cfg.latent, **self._vlm_data(labelled, spec), **extra
        )

    def _finetune(
        self,
        arm: str,
        k: int,
        seed: int,
        init_from: str,
        group: int | None = None,
    ) -> None:
        c = self.cfg
        demos = f"demos_k{k}" + ("" if group is None else f"_g{group}")
        workdir = self.finetune_run(arm, k, seed, group)
        name = os.path.basename(workdir)
        extra = {**self._vlm_data(self.data(demos)), "init_from": init_from, "train.seed": seed}
        stage = c.finetune
        if arm in LONG_ARMS:
            stage = ml_collections.ConfigDict(c.finetune.to_dict())
            stage.overrides.train.steps = self.finetune_steps(arm)
        self._train(name, arm, stage, **extra)
        tasks = c.tasks if group is None else self.groups[group]
        self._add(
            eval_job_name(name),
            arm,
            [
                "-m", "lapa_jax.evaluate_policy", "--workdir", workdir,
                "--tasks", ",".join(tasks), "--episodes", str(c.eval_episodes),
                "--seed", str(seed), "--max_frames", str(c.eval_max_frames),
                "--workers", str(c.workers), "--batch_slots", str(c.eval_batch_slots),
                "--videos_per_task", "1" if seed == c.seeds[0] else "0",
            ],
        )  # fmt: skip

    def _build(self) -> None:
        c, arms = self.cfg, set(self.cfg.arms)
        # lapa_transfer reads only the halves' video sets (video_g0, video_g1).
        video = [
            "lapa",
            "action_pretrained",
            "action_pretrained_clean",
            "vpt",
            "lapa_oracle",
            "lapa_rvq16",
            "lapa_rvq16_first4",
        ]
        if arms & set(video):
            self._dataset(
                "video",
                c.tasks,
                c.video_episodes_per_task,
                c.video_val_episodes_per_task,
                c.video_seed,
            )
        for k in c.demo_ks:
            self._dataset(f"demos_k{k}", c.tasks, k, c.demo_val_episodes_per_task, c.demo_seed)
        for g, tasks in enumerate(self.groups):
            if "lapa_transfer" in arms:
                v, val, s = c.video_episodes_per_task, c.video_val_episodes_per_task, c.video_seed
                self._dataset(f"video_g{g}", tasks, v, val, s)
            if arms & set(HALF_ARMS):
                for k in c.demo_ks:
                    self._dataset(
                        f"demos_k{k}_g{g}", tasks, k, c.demo_val_episodes_per_task, c.demo_seed
                    )
        # The prompts of every task (instructions only, no frames or actions).
        self._add(
            "tokenizer",
            SHARED,
            [
                "-m", "data_pipelines.train_tokenizer", "--data", self.data(f"demos_k{c.demo_ks[0]}"),
                "--spec", "metaworld", "--out", self.tokenizer, "--vocab_size", str(c.tokenizer_vocab),
            ],
        )  # fmt: skip
        if "lapa" in arms:
            self._latent_chain("all", "video", "lapa")
        if "lapa_transfer" in arms:
            for g in range(2):
                self._latent_chain(f"g{g}", f"video_g{g}", "lapa_transfer")
        if arms & {"lapa_rvq16", "lapa_rvq16_first4"}:
            # LAPA with issue 8's quantizer (c.laq_rvq16) on the same videos; the rest of
            # the chain is lapa's, so the pair isolates the quantizer.
            labelled = self._labels_chain(
                "rvq16", "video", "lapa_rvq16", c.laq_rvq16, "video_latent_rvq16"
            )
            if "lapa_rvq16" in arms:
                self._latent_pretrain("rvq16", "lapa_rvq16", labelled)
            if "lapa_rvq16_first4" in arms:
                self._latent_pretrain(
                    "rvq16_first4",
                    "lapa_rvq16_first4",
                    labelled,
                    **{"data.latent_tokens": RVQ16_FIRST_STAGES},
                )
        if "action_pretrained" in arms:
            self._train(
                "action_pre",
                "action_pretrained",
                c.action_pretrain,
                **self._vlm_data(self.data("video")),
            )
        if "action_pretrained_clean" in arms:
            # The same pretraining on the scripted expert's actions without the recorder's
            # noise: what VPT's smoother labels are measured against.
            labels = self.data("expert_clean.npz")
            self._add(
                "expert_labels",
                "action_pretrained_clean",
                [
                    "-m", "data_pipelines.label_expert_actions", "--src", self.data("video"),
                    "--out", labels,
                ],
            )  # fmt: skip
            extra = {**self._vlm_data(self.data("video")), "data.action_labels": labels}
            self._train("action_pre_clean", "action_pretrained_clean", c.action_pretrain, **extra)
        if "lapa_oracle" in arms:
            # Latent pretraining on the true actions binned into the quantizer's layout:
            # LAPA when the latents carry the action (data_pipelines.label_oracle_latents).
            labels = self.data("oracle_latents.npz")
            self._add(
                "oracle_labels",
                "lapa_oracle",
                [
                    "-m", "data_pipelines.label_oracle_latents", "--src", self.data("video"),
                    "--spec", "metaworld", "--out", labels,
                    "--frame_gap", str(c.oracle_frame_gap),
                ],
            )  # fmt: skip
            extra = {**self._vlm_data(self.data("video")), "data.latent_labels": labels}
            self._train("latent_oracle", "lapa_oracle", c.latent, **extra)
        if "vpt" in arms:
            for k in c.demo_ks:
                self._train(f"idm_k{k}", "vpt", c.idm, **{"data.dir": self.data(f"demos_k{k}")})
                labels = self.data(f"vpt_k{k}.npz")
                self._add(
                    f"idm_label_k{k}",
                    "vpt",
                    [
                        "-m", "data_pipelines.label_idm_actions", "--idm_workdir", self.run(f"idm_k{k}"),
                        "--src", self.data("video"), "--spec", "metaworld", "--out", labels,
                    ],
                )  # fmt: skip
                extra = {**self._vlm_data(self.data("video")), "data.action_labels": labels}
                self._train(f"vpt_pre_k{k}", "vpt", c.action_pretrain, **extra)
        # Seed-major, so an interrupted run has every k at its first seed before any
        # k gets a second one: a partial report then already spans the curve.
        for seed in c.seeds:
            for k in c.demo_ks:
                if "scratch" in arms:
                    self._finetune("scratch", k, seed, "")
                if "scratch_long" in arms:
                    self._finetune("scratch_long", k, seed, "")
                if "lapa" in arms:
                    self._finetune("lapa", k, seed, self.run("latent_all"))
                if "action_pretrained" in arms:
                    self._finetune("action_pretrained", k, seed, self.run("action_pre"))
                if "action_pretrained_clean" in arms:
                    pre = self.run("action_pre_clean")
                    self._finetune("action_pretrained_clean", k, seed, pre)
                if "vpt" in arms:
                    self._finetune("vpt", k, seed, self.run(f"vpt_pre_k{k}"))
                if "lapa_oracle" in arms:
                    self._finetune("lapa_oracle", k, seed, self.run("latent_oracle"))
                if "lapa_rvq16" in arms:
                    self._finetune("lapa_rvq16", k, seed, self.run("latent_rvq16"))
                if "lapa_rvq16_first4" in arms:
                    pre = self.run("latent_rvq16_first4")
                    self._finetune("lapa_rvq16_first4", k, seed, pre)
                if "lapa_transfer" in arms:
                    for g in range(2):  # pretrained on group 1-g, finetuned on group g
                        self._finetune("lapa_transfer", k, seed, self.run(f"latent_g{1 - g}"), g)
                if "scratch_half" in arms:
                    for g in range(2):  # lapa_transfer's control: the same half, no pretraining
                        self._finetune("scratch_half", k, seed, "", g)
                if "scratch_half_long" in arms:
                    for g in range(2):
                        self._finetune("scratch_half_long", k, seed, "", g)


class Runner:
    """Runs jobs in order, skipping finished ones; records wall and CPU seconds."""

    def __init__(self, workdir: str, log: Callable[[str], None] = print, echo: bool = False):
        self.dir = os.path.join(os.path.abspath(workdir), "jobs")
        os.makedirs(self.dir, exist_ok=True)
        self.log = log
        self.echo = echo  # also stream each job's output to this process's stdout

    def marker(self, job: Job) -> str:
        return os.path.join(self.dir, f"{job.name}.json")

    def done(self, job: Job) -> bool:
        return os.path.isfile(self.marker(job))

    def run(self, jobs: Sequence[Job]) -> None:
        todo = [j for j in jobs if not self.done(j)]
        self.log(f"[experiment] {len(jobs) - len(todo)} of {len(jobs)} jobs already done")
        for i, job in enumerate(todo):
            self.log(f"[experiment] {i + 1}/{len(todo)} {job.name} ({job.arm}) {job.description}")
            self.run_one(job)

    def run_one(self, job: Job) -> dict[str, Any]:
        log_path = os.path.join(self.dir, f"{job.name}.log")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.setdefault("MUJOCO_GL", "egl")
        with open(log_path, "ab") as log:
            log.write(f"\n$ python {' '.join(job.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [sys.executable, *job.argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
            )
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(4096):
                log.write(chunk)
                if self.echo:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            proc.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            with open(log_path, errors="replace") as f:
                tail = "".join(f.read().replace("\r", "\n").splitlines(True)[-25:])
            raise JobFailed(
                f"job {job.name} failed (exit {proc.returncode}); log {log_path}:\n{tail}\n"
                "Fix the cause and re-run the same command: finished jobs are skipped."
            )
        record = {
            "name": job.name,
            "arm": job.arm,
            "argv": job.argv,
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(
                (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1
            ),
        }
        tmp = self.marker(job) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, self.marker(job))
        return record


def main(argv: Sequence[str]) -> None:
    del argv
    from absl import flags

    f = flags.FLAGS
    plan = Plan(f.config, f.workdir)
    runner = Runner(f.workdir, echo=f.echo)
    if f.dry_run:
        for job in plan.jobs:
            mark = "done" if runner.done(job) else "todo"
            print(f"{mark}  {job.arm:<18} {job.name}: python {' '.join(job.argv)}")
        return
    if not f.report_only:
        runner.run(plan.jobs)
    from lapa_jax.experiment_report import build_report, merge_recorded, report_table, write_report

    report = build_report(plan, runner)
    for path in f.merge_results:
        with open(path) as fh:
            report = merge_recorded(report, json.load(fh), path)
    paths = write_report(report, os.path.join(plan.w, "report"))
    if f.results:
        paths = write_report(report, f.results)
    print(report_table(report))
    art = report["artefacts"]
    for key in ("reconstructions", "atlas"):
        if key in art:
            print(f"{key}: {art[key]}")
    for arm, vids in art["rollouts"].items():
        print(f"rollouts ({arm}): {', '.join(vids)}")
    for p in paths:
        print(f"wrote {p}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/metaworld_lapa.py:VARIANT")
    flags.DEFINE_string("workdir", None, "where datasets, runs, job records and the report go")
    flags.DEFINE_string("results", "", "also write the report here (e.g. results/metaworld_lapa)")
    flags.DEFINE_bool("dry_run", False, "print the jobs and whether each is done, run nothing")
    flags.DEFINE_bool("report_only", False, "rebuild the report from finished jobs")
    flags.DEFINE_multi_string(
        "merge_results",
        [],
        "results.json of an earlier workdir of the same protocol: its finished (arm, k, "
        "seed) results join the report (a run resumed in a fresh workdir)",
    )
    flags.DEFINE_bool("echo", False, "stream every job's output here too (progress bars)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
