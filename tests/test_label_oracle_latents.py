"""Oracle latent actions (true actions binned into the quantizer's layout) and latent
pretraining that reads its codes from such an npz instead of the dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipelines import label_oracle_latents as oracle
from experiments import latent_pretrain as lp_experiment
from lapa_jax.data.sources import DataError, EpisodeSource
from lapa_jax.tasks.latent_pretrain import LatentLabels, LatentPretrainTask, _all_labels


def test_gap_sums_match_a_loop_and_clip_at_the_episode_end():
    a = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    got = oracle.gap_sums(a, 3)
    for t in range(7):
        np.testing.assert_allclose(got[t], a[t : min(t + 3, 6)].sum(0), atol=1e-5)
    np.testing.assert_array_equal(got[-1], 0.0)  # the last frame pairs with itself


def test_quantile_bins_split_the_values_evenly():
    v = np.random.default_rng(1).normal(size=(8000, 2))
    edges = oracle.quantile_edges(v, 8)
    assert edges.shape == (2, 7) and np.all(np.diff(edges, axis=1) > 0)
    codes = oracle.bin_codes(v, edges)
    assert codes.min() == 0 and codes.max() == 7
    for a in range(2):
        np.testing.assert_allclose(np.bincount(codes[:, a]) / len(v), 1 / 8, atol=0.002)


@pytest.fixture(scope="module")
def oracle_npz(metaworld_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("oracle") / "codes.npz")
    oracle.main(["--src", metaworld_dir, "--spec", "metaworld", "--out", out, "--frame_gap", "2"])
    return out


def test_oracle_codes_are_the_binned_gap_sums(metaworld_dir, oracle_npz):
    with np.load(oracle_npz) as z:
        meta = json.loads(str(z["__meta__"]))
    edges = np.asarray(meta["edges"], np.float32)
    assert edges.shape == (4, 7) and meta["frame_gap"] == 2
    labels = LatentLabels(oracle_npz)
    for split in ("train", "val"):
        source = EpisodeSource(metaworld_dir, "metaworld", split)
        for e in range(len(source)):
            codes = labels.episode(split, e, int(source.lengths[e]))
            assert codes.dtype == np.int32 and codes.shape == (source.lengths[e], 4)
            want = oracle.bin_codes(oracle.gap_sums(source.actions(e), 2), edges)
            np.testing.assert_array_equal(codes, want)


def test_latent_pretraining_reads_the_codes_from_the_npz(metaworld_dir, oracle_npz, tokenizer_path):
    c = lp_experiment.get_config("tiny")
    c.data.dir, c.data.spec, c.data.tokenizer = metaworld_dir, "metaworld", tokenizer_path
    c.data.latent_labels = oracle_npz
    task = LatentPretrainTask(c)  # the unlabelled dataset: no latent_action_key needed
    src = task.step_source("train")
    labels = LatentLabels(oracle_npz)
    for i in (0, len(src) // 2, len(src) - 1):
        item = src[i]
        e, t = int(item["episode"]), int(item["t"])
        length = int(src.steps.source.lengths[e])
        np.testing.assert_array_equal(item["latent"], labels.episode("train", e, length)[t])
    assert _all_labels(src).shape == (len(src), 4)
    # Without the npz the same dataset is refused: it holds no latent labels.
    c.data.latent_labels = ""
    with pytest.raises(DataError, match="no latent_action_key"):
        LatentPretrainTask(c).step_source("train")
    # With the layout left to the labels, it is the npz's: 4 dimensions of 8 bins.
    c.data.latent_labels = oracle_npz
    c.model.num_latent_tokens = c.model.latent_codes = 0
    cfg = LatentPretrainTask(c).model_cfg
    assert (cfg.num_latent_tokens, cfg.latent_codes) == (4, labels.meta["codes"]) == (4, 8)


def test_bad_latent_labels_are_refused(tmp_path):
    path = str(tmp_path / "bad.npz")
    np.savez(path, **{"train/0": np.zeros((3, 4), np.float32), "train/1": np.zeros((2,), np.int32)})
    labels = LatentLabels(path)
    with pytest.raises(DataError, match="not integer codes"):
        labels.episode("train", 0, 3)
    with pytest.raises(DataError, match="latent codes of shape"):
        labels.episode("train", 1, 2)
    with pytest.raises(DataError, match="no latent codes for train/5"):
        labels.episode("train", 5, 2)
    with pytest.raises(FileNotFoundError, match=r"data\.latent_labels"):
        LatentLabels(str(tmp_path / "none.npz"))
    with pytest.raises(ValueError, match="--frame_gap must be >= 1"):
        oracle.main(["--src", "x", "--spec", "metaworld", "--out", path, "--frame_gap", "0"])
