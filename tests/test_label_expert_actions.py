"""The scripted expert's noise-free actions, recomputed from the stored observations."""

from __future__ import annotations

import json

import numpy as np

from data_pipelines import label_expert_actions
from lapa_jax.data.sources import EpisodeSource
from lapa_jax.tasks.action_finetune import ActionLabels


def test_expert_labels_are_the_stored_actions_without_their_noise(metaworld_dir, tmp_path):
    out = str(tmp_path / "clean.npz")
    meta = label_expert_actions.main(["--src", metaworld_dir, "--out", out])
    labels = ActionLabels(out)
    residuals = []
    for split in ("train", "val"):
        source = EpisodeSource(metaworld_dir, "metaworld", split)
        assert meta["lengths"][split] == [int(n) for n in source.lengths]
        for e in range(len(source)):
            clean = labels.episode(split, e, int(source.lengths[e]))
            assert clean.shape == (source.lengths[e], 4) and np.abs(clean).max() <= 1.0
            residuals.append(source.actions(e) - clean)
    r = np.concatenate(residuals)
    # The fixture records the expert plus N(0, 0.1) noise, clipped to [-1, 1]: what is
    # left is that noise, never a different action (a wrong observation or task would
    # leave residuals of order 1).
    assert 0.04 < r.std() < 0.12 and np.abs(r).max() < 0.6
    assert abs(r.mean()) < 0.03
    with np.load(out) as f:
        assert json.loads(str(f["__meta__"]))["residual_std"] == meta["residual_std"]
