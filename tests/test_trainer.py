"""The generic trainer on the LAQ task: sharding equivalence, exact resume, checkpoint
fallback and refusal, NaN handling, metrics and images."""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapa_jax.checkpointing import CheckpointMismatchError
from lapa_jax.tasks.laq import LAQTask
from lapa_jax.trainer import NonFiniteLossError, Trainer
from tests.conftest import tiny_laq_config as tiny_config


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def batches(metaworld_dir):
    c = tiny_config(metaworld_dir)
    it = iter(LAQTask(c).make_data("train", c.train.batch_size, seed=0))
    return [next(it) for _ in range(5)]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_step_matches_single_device(metaworld_dir, batches):
    single = tiny_config(metaworld_dir)
    single.mesh.update({"data": 1, "fsdp": 1, "tensor": 1})
    sharded = tiny_config(metaworld_dir)
    sharded.mesh.update({"data": 2, "fsdp": 2, "tensor": 2})
    states, losses = [], []
    for cfg in (single, sharded):
        trainer = Trainer(cfg, "/nonexistent")
        state = trainer.init_state()
        ls = []
        for b in batches:
            state, m = trainer.train_step(state, b)
            ls.append(float(m["loss"]))
        states.append(jax.device_get(state))
        losses.append(ls)
        if cfg is sharded:
            kernel = state.params["encoder"]["spatial_0"]["mlp"]["wi"]["kernel"]
            assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
            assert len(kernel.sharding.device_set) == 8
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    for a, b in zip(
        jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    assert leaves_equal(states[0].task_state["usage"], states[1].task_state["usage"])


def test_run_writes_metrics_images_and_config(full_run):
    workdir, state = full_run
    assert int(state.step) == 6
    lines = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [x["step"] for x in lines] == [2, 4, 6]
    for key in (
        "loss",
        "psnr",
        "copy_psnr",
        "learning_rate",
        "grad_norm",
        "codes_used_batch",
        "codes_used_window",
        "perplexity_window",
        "min_perplexity_per_position",
        "dead_codes_replaced",
        "samples_per_s",
        "step_time_s",
    ):
        assert key in lines[-1], key
    assert lines[-1]["learning_rate"] == pytest.approx(1e-4)
    assert 1 <= lines[-1]["codes_used_window"] <= 8
    assert glob.glob(os.path.join(workdir, "images", "reconstructions_0000006.png"))
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert read_json(os.path.join(workdir, "config.json"))["model"]["width"] == 32
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]


def test_resume_is_bit_exact(metaworld_dir, full_run, tmp_path):
    ref_dir, ref = full_run
    workdir = str(tmp_path / "resumed")
    Trainer(tiny_config(metaworld_dir, steps=3), workdir).run()
    resumed = jax.device_get(Trainer(tiny_config(metaworld_dir), workdir).run())
    assert int(resumed.step) == 6
    assert leaves_equal(resumed.params, ref.params)
    assert leaves_equal(resumed.opt_state, ref.opt_state)
    assert leaves_equal(resumed.task_state, ref.task_state)
    last = lambda d: read_jsonl(os.path.join(d, "metrics.jsonl"))[-1]  # noqa: E731
    assert last(workdir)["loss"] == last(ref_dir)["loss"]


def test_truncated_checkpoint_falls_back_to_the_previous_one(
    metaworld_dir, full_run, tmp_path, caplog
):
    import shutil

    ref_dir, ref = full_run
    workdir = str(tmp_path / "corrupt")
    shutil.copytree(ref_dir, workdir)
    for path in glob.glob(
        os.path.join(workdir, "checkpoints", "6", "state", "**", "*"), recursive=True
    ):
        if os.path.isfile(path):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    with caplog.at_level("WARNING"):
        state = jax.device_get(Trainer(tiny_config(metaworld_dir), workdir).run())
    assert any("step 6" in r.message for r in caplog.records)
    assert glob.glob(
        os.path.join(workdir, "checkpoints_unreadable", "6.*")
    )  # set aside, not deleted
    # Restored step 3 and retrained to 6: identical to the uninterrupted run.
    assert leaves_equal(state.params, ref.params)


def test_checkpoint_of_another_shape_is_refused(metaworld_dir, full_run, tmp_path):
    import shutil

    workdir = str(tmp_path / "mismatch")
    shutil.copytree(full_run[0], workdir)
    cfg = tiny_config(metaworld_dir)
    cfg.model.width = 48
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint has shape \(32"):
        Trainer(cfg, workdir).run()


class NaNAfter4(LAQTask):
    def loss(self, params, task_state, batch, rng, step):
        loss, aux = super().loss(params, task_state, batch, rng, step)
        return jnp.where(step >= 4, jnp.nan, loss), aux


def test_nan_loss_stops_and_keeps_the_good_checkpoint(metaworld_dir, tmp_path):
    cfg = tiny_config(metaworld_dir)
    workdir = str(tmp_path / "nan")
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is step 3"):
        Trainer(cfg, workdir, task=NaNAfter4(cfg)).run()
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]


@pytest.mark.parametrize(
    "path, value, match",
    [
        ("train.batch_size", 6, "not divisible by the data-parallel size"),
        ("optimizer.schedule", "linear", "schedule"),
        ("optimizer.lr", 0.0, "lr must be > 0"),
        ("dead_code.source", "random", "dead_code.source"),
        ("loss.changed_weight", -1.0, "changed_weight"),
        ("loss.usage_entropy_temperature", 0.0, "usage_entropy_temperature"),
        ("task", "nope", "unknown task"),
        ("mesh.data", 3, "devices"),
    ],
)
def test_bad_config_values(metaworld_dir, path, value, match):
    cfg = tiny_config(metaworld_dir)
    if path != "mesh.data":
        cfg.mesh.update({"data": -1})
    else:
        cfg.mesh.update({"fsdp": -1})
    node, key = cfg, path.split(".")
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    with pytest.raises(ValueError, match=match):
        Trainer(cfg, "/nonexistent")
