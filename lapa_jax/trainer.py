"""The one training loop, shared by every stage.

Mesh from config; parameters and optimizer state born sharded by
`jax.jit(init, out_shardings=...)` from the logical axis names the model declares; a
donated, jitted train step with explicit in/out shardings; Orbax checkpoints of the
state and the data position; metrics to JSONL, TensorBoard and a progress bar.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from lapa_jax import sharding
from lapa_jax.checkpointing import Checkpointer, abstract_with_shardings
from lapa_jax.metric_writers import MetricWriter
from lapa_jax.tasks import get_task
from lapa_jax.tasks.base import Task

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    task_state: Any
    rng: jax.Array
    all_finite: jax.Array  # False once any loss was NaN/inf: such a state is never saved


class NonFiniteLossError(FloatingPointError):
    pass


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    if opt.lr <= 0:
        raise ValueError(f"optimizer.lr must be > 0, got {opt.lr}")
    warmup = int(opt.warmup_steps)
    if opt.schedule == "constant":
        main = optax.constant_schedule(opt.lr)
    elif opt.schedule == "cosine":
        main = optax.cosine_decay_schedule(
            opt.lr, max(1, total_steps - warmup), alpha=opt.get("final_lr_fraction", 0.0)
        )
    else:
        raise ValueError(f"optimizer.schedule must be 'constant' or 'cosine', got {opt.schedule!r}")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), main], [warmup])


def frozen_labels(frozen: tuple[str, ...], trainable: tuple[str, ...]) -> Callable[[Any], Any]:
    """Labels each parameter "train" or "frozen": frozen if its top-level name is in
    `frozen`, or if `trainable` patterns are given and none matches its '/'-joined path
    (re.search). Unknown frozen names and a model left with nothing to train are errors."""
    patterns = [re.compile(p) for p in trainable]

    def labels(params: Any) -> Any:
        missing = sorted(set(frozen) - set(params))
        if missing:
            raise ValueError(
                f"optimizer.frozen names {missing}, not top-level parameters {sorted(params)}"
            )
        flat = traverse_util.flatten_dict(params, sep="/")
        out = {}
        for path in flat:
            keep = path.split("/")[0] not in frozen
            if patterns:
                keep = keep and any(p.search(path) for p in patterns)
            out[path] = "train" if keep else "frozen"
        if "train" not in out.values():
            raise ValueError(
                f"optimizer.frozen {list(frozen)} / trainable {list(trainable)} leave no "
                "parameter to train"
            )
        return traverse_util.unflatten_dict(out, sep="/")

    return labels


def make_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(opt, total_steps)
    if opt.name == "adam":
        core = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "adamw":
        core = optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay
        )
    else:
        raise ValueError(f"optimizer.name must be 'adam' or 'adamw', got {opt.name!r}")
    parts = (
        [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip and opt.grad_clip > 0 else []
    )
    frozen = tuple(opt.get("frozen", ()) or ())
    trainable = tuple(opt.get("trainable", ()) or ())
    if not (frozen or trainable):
        return optax.chain(*parts, core), schedule
    # Frozen parameters (top-level names such as "vision", or everything that no
    # `trainable` pattern matches, as LoRA does) get no update, weight decay included,
    # no optimizer state, and no say in gradient clipping.
    tx = optax.multi_transform(
        {"train": optax.chain(*parts, core), "frozen": optax.set_to_zero()},
        frozen_labels(frozen, trainable),
    )
    return tx, schedule


class Trainer:
    """Builds everything a run needs from a config; `run()` trains to `train.steps`."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, task: Task | None = None):
        self.config = config
        self.workdir = os.path.abspath(workdir)
        self.task = task or get_task(config.task)(config)
        t = config.train
        if t.steps < 0 or t.batch_size < 1:
            raise ValueError(
                f"train.steps must be >= 0 and train.batch_size >= 1, got {t.steps}, {t.batch_size}"
            )
        self.mesh = sharding.make_mesh(dict(config.mesh))
        self.rules = sharding.rules_from_config(config.sharding_rules)
        sharding.check_rules(self.rules, self.mesh)
        dp = sharding.data_parallel_size(self.mesh)
        if t.batch_size % dp:
            raise ValueError(
                f"train.batch_size {t.batch_size} is not divisible by the data-parallel size {dp}"
            )
        self.tx, self.schedule = make_optimizer(config.optimizer, t.steps)
        self.pretrained_report: dict[str, Any] = {}
        self._step_flops: float | None = None
        self._build()

    # ---- construction --------------------------------------------------------------

    def _init_boxed(self, rng: jax.Array) -> TrainState:
        k_init, k_state = jax.random.split(rng)
        batch = {k: jnp.asarray(v) for k, v in self.task.dummy_batch(1).items()}
        params, task_state = self.task.init(k_init, batch)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            task_state=task_state,
            rng=k_state,
            all_finite=jnp.ones((), bool),
        )

    def _build(self) -> None:
        rng = jax.random.PRNGKey(self.config.train.seed)
        with self.mesh, nn.logical_axis_rules(self.rules):
            abstract_boxed = jax.eval_shape(self._init_boxed, rng)
            logical = nn.get_partition_spec(abstract_boxed)
            self.state_sharding = sharding.logical_to_shardings(logical, self.mesh, self.rules)
        self.abstract_state = abstract_with_shardings(
            nn.meta.unbox(abstract_boxed), self.state_sharding
        )
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self._init_fn = jax.jit(
            lambda r: nn.meta.unbox(self._init_boxed(r)), out_shardings=self.state_sharding
        )
        self._step_fn = jax.jit(
            self._train_step,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
            donate_argnums=(0,),
        )

    def init_state(self) -> TrainState:
        with self.mesh, nn.logical_axis_rules(self.rules):
            state = self._init_fn(jax.random.PRNGKey(self.config.train.seed))
        flat = traverse_util.flatten_dict(state.params, sep="/")
        arrays, self.pretrained_report = self.task.pretrained(
            {k: tuple(v.shape) for k, v in flat.items()}
        )
        if not arrays:
            return state
        # Placed straight into each parameter's sharding, one array at a time.
        for path, arr in arrays.items():
            leaf = flat[path]
            flat[path] = jax.device_put(np.asarray(arr, leaf.dtype), leaf.sharding)
        return state.replace(params=traverse_util.unflatten_dict(flat, sep="/"))

    def _init_summary(self) -> str:
        r = self.pretrained_report
        if not r.get("loaded"):
            return "new run, random initialisation"
        parts = [f"{k} from {v['source']}" for k, v in r.items() if isinstance(v, dict)]
        return f"new run, {r.get('loaded', 0)} arrays loaded ({'; '.join(parts)})"

    def num_params(self) -> int:
        return int(sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_state.params)))

    # ---- the step ------------------------------------------------------------------

    def _train_step(
        self, state: TrainState, batch: dict[str, jax.Array]
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        step_rng = jax.random.fold_in(state.rng, state.step)
        k_loss, k_after = jax.random.split(step_rng)
        grad_fn = jax.value_and_grad(self.task.loss, has_aux=True)
        (loss, (metrics, aux)), grads = grad_fn(
            state.params, state.task_state, batch, k_loss, state.step
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params, task_state, more = self.task.after_update(
            params, state.task_state, aux, k_after, state.step
        )
        metrics = {**metrics, **more}
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["learning_rate"] = self.schedule(state.step)
        finite = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            task_state=task_state,
            all_finite=state.all_finite & finite,
        )
        return new_state, metrics

    def step_flops(self, state: TrainState, host_batch: dict[str, Any]) -> float:
        """FLOPs of one train step over all devices, from XLA's cost analysis of the
        lowered (not yet partitioned) step; 0 where the backend gives none."""
        batch = sharding.host_batch_to_global(_numeric(host_batch), self.mesh)
        try:
            with self.mesh, nn.logical_axis_rules(self.rules):
                cost = self._step_fn.lower(state, batch).cost_analysis()
        except Exception:  # an optional metric must never stop training
            return 0.0
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        return float((cost or {}).get("flops", 0.0))

    def train_step(
        self, state: TrainState, host_batch: dict[str, Any]
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        batch = sharding.host_batch_to_global(_numeric(host_batch), self.mesh)
        with self.mesh, nn.logical_axis_rules(self.rules):
            return self._step_fn(state, batch)

    # ---- the loop ------------------------------------------------------------------

    def run(self) -> TrainState:
        cfg, t = self.config, self.config.train
        os.makedirs(self.workdir, exist_ok=True)
        if jax.process_index() == 0:
            with open(os.path.join(self.workdir, "config.json"), "w") as f:
                f.write(cfg.to_json_best_effort(indent=2))
        data = self.task.make_data(cfg.data.split, t.batch_size, t.seed, shuffle=True)
        data_iter = iter(data)
        ckpt = Checkpointer(
            os.path.join(self.workdir, "checkpoints"), t.keep_checkpoints, t.async_checkpoints
        )
        restored = ckpt.restore(self.abstract_state, data_iter)
        if restored is not None:
            state, start = restored
            log.info("Resumed from step %d", start)
        else:
            state, start = self.init_state(), 0
            if self.pretrained_report:
                log.info("Initialised from pretrained weights: %s", self.pretrained_report)
        writer = MetricWriter(self.workdir, t.steps, start, progress=t.progress_bar)
        writer.message(
            f"[{self.task.name}] {self.num_params() / 1e6:.2f}M parameters, mesh {dict(self.mesh.shape)}, "
            f"{jax.device_count()} devices, {jax.process_count()} processes, "
            + (f"resumed at step {start}" if restored else self._init_summary())
        )
        last_good = start if restored else None
        run_t0 = window_t0 = time.perf_counter()
        window_steps = 0
        metrics_acc: list[dict[str, Any]] = []
        try:
            for step in range(start, t.steps):
                host_batch = next(data_iter)
                state, metrics = self.train_step(state, host_batch)
                metrics_acc.append(metrics)
                window_steps += 1
                done = step + 1
                writer.advance()
                if done % t.log_every == 0 or done == t.steps:
                    scalars = _mean_metrics(jax.device_get(metrics_acc))
                    metrics_acc = []
                    if not np.isfinite(scalars["loss"]) or not bool(
                        jax.device_get(state.all_finite)
                    ):
                        raise NonFiniteLossError(
                            f"non-finite loss ({scalars['loss']}) by step {done}; stopping. The last good "
                            f"checkpoint is step {last_good} in {ckpt.directory}; it was not overwritten."
                        )
                    dt = time.perf_counter() - window_t0
                    scalars["step_time_s"] = dt / window_steps
                    scalars["samples_per_s"] = window_steps * t.batch_size / dt
                    tokens = self.task.tokens_per_example()
                    if tokens:
                        scalars["tokens_per_s"] = scalars["samples_per_s"] * tokens
                    if self._step_flops is None:
                        self._step_flops = self.step_flops(state, host_batch)
                    if self._step_flops:
                        scalars["model_gflops_per_s"] = (
                            self._step_flops / scalars["step_time_s"] / 1e9
                        )
                    scalars["wall_time_s"] = time.perf_counter() - run_t0  # this process's
                    writer.write_scalars(done, scalars)
                    self._collapse_alarm(writer, done, scalars)
                    window_t0, window_steps = time.perf_counter(), 0
                if t.image_every and (done % t.image_every == 0 or done == t.steps):
                    for name, img in self.task.summaries(state.params, host_batch).items():
                        writer.write_image(done, name, img)
                eval_every = t.get("eval_every", 0)
                if eval_every and (done % eval_every == 0 or done == t.steps):
                    with self.mesh, nn.logical_axis_rules(self.rules):
                        report = self.task.evaluate(state.params, self.mesh)
                    if report:
                        writer.write_scalars(
                            done, {f"eval_{k}": float(v) for k, v in report.items()}
                        )
                if done % t.checkpoint_every == 0 or done == t.steps:
                    if not bool(jax.device_get(state.all_finite)):
                        raise NonFiniteLossError(
                            f"non-finite loss before step {done}; not saving. The last good checkpoint "
                            f"is step {last_good} in {ckpt.directory}."
                        )
                    ckpt.save(done, state, data_iter)
                    last_good = done
                if done == t.steps:
                    self.task.after_run(self.workdir, state.params, done)
        finally:
            ckpt.close()
            writer.close()
        return state

    def _collapse_alarm(self, writer: MetricWriter, step: int, scalars: dict[str, float]) -> None:
        alarm = self.config.get("collapse_alarm")
        if not alarm or "min_perplexity_per_position" not in scalars or step < alarm.after_step:
            return
        if scalars["min_perplexity_per_position"] < alarm.min_perplexity:
            writer.message(
                f"WARNING step {step}: codebook collapse? min per-position perplexity "
                f"{scalars['min_perplexity_per_position']:.2f} < {alarm.min_perplexity} "
                f"(codes used over the window: {scalars.get('codes_used_window', float('nan')):.0f})"
            )


def _numeric(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in "biuf"}


def _mean_metrics(metrics: list[dict[str, Any]]) -> dict[str, float]:
    keys = metrics[0].keys()
    return {k: float(np.mean([np.asarray(m[k]) for m in metrics])) for k in keys}
