"""The inverse dynamics model (the VPT-style baseline): it trains and reports against
its pixel baseline, pseudo-labels a dataset step by step, and stage 3 trains on those
labels in place of the dataset's own actions."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from experiments import idm as idm_experiment
from lapa_jax.data.pipelines import square_image
from lapa_jax.data.sources import DataError, EpisodeSource
from lapa_jax.trainer import Trainer
from tests.test_action_finetune import tiny_config as tiny_finetune_config
from tests.test_trainer import read_jsonl


@pytest.fixture(scope="module")
def idm_run(metaworld_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("idm"))
    c = idm_experiment.get_config("tiny")
    c.data.dir = metaworld_dir
    trainer = Trainer(c, workdir)
    trainer.run()
    return workdir, trainer


@pytest.fixture(scope="module")
def labels_path(idm_run, metaworld_dir, tmp_path_factory):
    from data_pipelines import label_idm_actions

    out = str(tmp_path_factory.mktemp("idm_labels") / "labels.npz")
    label_idm_actions.main(
        ["--idm_workdir", idm_run[0], "--src", metaworld_dir, "--spec", "metaworld", "--out", out]
    )
    return out


def test_idm_trains_and_reports_against_pixels(idm_run):
    workdir = idm_run[0]
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    ev = [r for r in rows if "eval_r2_dim_0" in r][-1]
    for i in range(4):
        assert np.isfinite(ev[f"eval_r2_dim_{i}"])
        assert np.isfinite(ev[f"eval_pixel_difference_ridge_r2_dim_{i}"])
    with open(os.path.join(workdir, "config.json")) as f:
        stats = json.loads(json.load(f)["action_stats"])
    assert len(stats["mean"]) == 4 and min(stats["std"]) > 0


def test_pseudo_labels_are_the_idm_on_consecutive_frames(idm_run, labels_path, metaworld_dir):
    import jax

    from lapa_jax.evaluate_laq import load_config, load_params
    from lapa_jax.tasks.idm import IDMTask

    workdir = idm_run[0]
    config = load_config(workdir)
    task = IDMTask(config)
    params = jax.device_get(load_params(workdir, config)[0])
    source = EpisodeSource(metaworld_dir, "metaworld", "val")
    with np.load(labels_path) as z:
        labels = {k: z[k] for k in z.files}
        meta = json.loads(str(z["__meta__"]))
    assert meta["lengths"]["val"] == [int(n) for n in source.lengths]
    n = int(source.lengths[0])
    frames = (
        np.stack([square_image(source.image(0, t), 16, "crop") for t in range(n)]).astype(
            np.float32
        )
        / 255.0
    )
    want = task.predict(params, np.stack([frames[:-1], frames[1:]], 1))
    got = labels["val/0"]
    assert got.shape == (n, 4)
    np.testing.assert_allclose(got[:-1], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[-1], got[-2])  # no next frame: repeats the last


def test_finetuning_reads_pseudo_labels_instead_of_the_datasets(
    metaworld_dir, tokenizer_path, labels_path, tmp_path
):
    from lapa_jax.tasks.action_finetune import ActionFinetuneTask

    c = tiny_finetune_config(metaworld_dir, tokenizer_path)
    c.head, c.chunk_size = "chunked", 2
    c.data.action_labels = labels_path
    task = ActionFinetuneTask(c)
    with np.load(labels_path) as z:
        train = np.concatenate([z[f"train/{e}"] for e in range(4)])
        ep0 = z["train/0"]
    np.testing.assert_allclose(task.head.mean, train.mean(0), rtol=1e-5, atol=1e-6)
    steps = task.step_source("train")
    item = steps[1]
    np.testing.assert_array_equal(item["action"], ep0[1])
    np.testing.assert_allclose(
        task.head.to_actions(item["actions"]), ep0[1:3], rtol=1e-5, atol=1e-6
    )
    # Labels from another dataset (wrong lengths) or a missing file are errors.
    bad = str(tmp_path / "bad.npz")
    with np.load(labels_path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train/0"] = arrays["train/0"][:-1]
    np.savez(bad, **arrays)
    c2 = tiny_finetune_config(metaworld_dir, tokenizer_path)
    c2.data.action_labels = bad
    with pytest.raises(DataError, match="train/0 has actions of shape"):
        ActionFinetuneTask(c2)
    c2.data.action_labels = str(tmp_path / "none.npz")
    with pytest.raises(FileNotFoundError, match="action_labels"):
        ActionFinetuneTask(c2)


def test_idm_label_agreement_scores_labels_against_true_actions():
    from benchmarks.idm_label_agreement import agreement

    rng = np.random.default_rng(0)
    true = {f"train/{e}": rng.normal(size=(20, 4)).astype(np.float32) for e in range(3)}
    exact = agreement(dict(true), true)
    assert exact["steps"] == 60 and np.allclose(exact["r2_per_dim"], 1.0)
    assert np.allclose(exact["residual_std_per_dim"], 0.0)
    halved = agreement({k: v * 0.5 for k, v in true.items()}, true)
    assert np.allclose(halved["r2_per_dim"], 0.75, atol=0.05)  # 1 - 0.25 of the variance
    with pytest.raises(KeyError, match="no episode 'train/2'"):
        agreement({k: v for k, v in true.items() if k != "train/2"}, true)
    with pytest.raises(ValueError, match="episode train/0"):
        agreement({**true, "train/0": true["train/0"][:5]}, true)
