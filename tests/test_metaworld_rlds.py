"""The generated Meta-World dataset reads back exactly as it was rolled out."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_pipelines import metaworld_rlds
from lapa_jax.data import statistics
from lapa_jax.data.sources import EpisodeSource
from lapa_jax.sim import metaworld as mw
from tests.conftest import TINY_EPISODES, TINY_MAX_FRAMES, TINY_TASKS


def test_round_trip_against_direct_rollouts(metaworld_dir):
    src = EpisodeSource(metaworld_dir, "metaworld")
    assert len(src) == len(TINY_TASKS) * TINY_EPISODES
    config = mw.RolloutConfig(max_frames=TINY_MAX_FRAMES)
    pool = mw.rollout_pool(config, 1)
    try:
        for e in range(len(src)):
            meta = src.episode_metadata(e)
            assert meta["task"] == TINY_TASKS[e // TINY_EPISODES] and meta["episode_id"] == e
            ep = pool.apply(mw.worker_rollout_fn, ((meta["task"], meta["seed"]),))
            n = len(ep["images"])
            assert src.lengths[e] == n
            steps = src.steps(e)
            for t in range(n):
                np.testing.assert_array_equal(src.image(e, t, steps), ep["images"][t])
                np.testing.assert_array_equal(src.action(e, t, steps), ep["actions"][t])
                np.testing.assert_array_equal(src.state(e, t, steps), ep["states"][t])
                assert src.instruction(e, t, steps) == mw.TASK_INSTRUCTIONS[meta["task"]]
            assert bool(meta["success"]) == ep["success"]
    finally:
        pool.terminate()


def test_episode_seeds_follow_the_documented_rule(metaworld_dir):
    src = EpisodeSource(metaworld_dir, "metaworld")
    for e in range(len(src)):
        meta = src.episode_metadata(e)
        index = e % TINY_EPISODES
        candidates = [mw.episode_seed(7, meta["task"], index, a) for a in range(5)]
        assert meta["seed"] in candidates


def test_val_split_and_provenance(metaworld_dir):
    val = EpisodeSource(metaworld_dir, "metaworld", split="val")
    assert len(val) == len(TINY_TASKS)
    train_seeds = {
        EpisodeSource(metaworld_dir, "metaworld").episode_metadata(e)["seed"] for e in range(4)
    }
    assert not train_seeds & {val.episode_metadata(e)["seed"] for e in range(len(val))}
    with open(os.path.join(metaworld_dir, "generation.json")) as f:
        gen = json.load(f)
    assert gen["episodes"] == len(TINY_TASKS) * (TINY_EPISODES + 1)
    assert gen["rollout_config"]["max_frames"] == TINY_MAX_FRAMES
    stats = statistics.load_statistics(metaworld_dir)
    assert stats["num_episodes"] == len(TINY_TASKS) * TINY_EPISODES
    assert stats["action"]["dim"] == mw.ACTION_DIM


def test_refuses_to_overwrite(metaworld_dir):
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        metaworld_rlds.build_dataset(metaworld_dir, tasks=["reach-v3"], episodes_per_task=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tasks": ["fly-v3"]}, "Unknown Meta-World task"),
        ({"episodes_per_task": 0}, "episodes_per_task"),
        ({"file_format": "parquet"}, "file_format"),
        ({"config": mw.RolloutConfig(image_size=2)}, "image_size"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"tasks": ["reach-v3"], "episodes_per_task": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        metaworld_rlds.build_dataset(str(tmp_path / "x"), **args)
    assert not os.path.exists(tmp_path / "x")
