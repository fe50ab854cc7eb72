"""Reading RLDS layouts through specs, and every bad-input case naming what is wrong."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lapa_jax.data import specs, statistics
from lapa_jax.data.sources import DataError, EpisodeSource
from tests import rlds_fixtures as fx


def test_bridge_layout(bridge_dir):
    src = EpisodeSource(bridge_dir, "bridge")
    assert len(src) == 4 and src.lengths.tolist() == [5, 3, 7, 2]
    assert src.action_dim == 7
    for e in range(4):
        for t in range(int(src.lengths[e])):
            np.testing.assert_array_equal(src.image(e, t), fx.frame(e, t, 16, 16))
            np.testing.assert_array_equal(src.action(e, t), fx.action(e, t))
    assert src.instruction(2, 1) == "do task 2"
    np.testing.assert_array_equal(src.actions(2), np.stack([fx.action(2, t) for t in range(7)]))
    assert "tensorflow" not in sys.modules, "reading must not import TensorFlow"


def test_oxe_dict_action_and_nested_instruction(oxe_dir):
    src = EpisodeSource(oxe_dir, "oxe_bridge")
    assert src.action_dim == 7  # 3 + 3 + 1 (scalar open_gripper)
    a = src.action(1, 3)
    np.testing.assert_allclose(a[:6], fx.action(1, 3)[:6])
    assert a[6] == 0.0  # open_gripper False at odd steps
    assert src.action(1, 2)[6] == 1.0
    assert src.instruction(1, 0) == "do task 1"
    assert src.image(0, 2).shape == (12, 20, 3)


def test_spec_that_does_not_match(bridge_dir):
    with pytest.raises(DataError, match="image key 'observation/image' is not in the steps") as e:
        EpisodeSource(bridge_dir, "oxe_bridge")
    msg = str(e.value)
    assert (
        "synthetic_bridge" in msg and "observation/image_0" in msg
    )  # names dataset and what exists
    bad_action = specs.DatasetSpec(
        name="x", image_key="observation/image_0", action_keys=("action/world_vector",)
    )
    with pytest.raises(DataError, match="action key 'action/world_vector'"):
        EpisodeSource(bridge_dir, bad_action)
    bad_instr = specs.DatasetSpec(
        name="y", image_key="observation/image_0", instruction_key="instruction"
    )
    with pytest.raises(DataError, match="instruction key 'instruction'"):
        EpisodeSource(bridge_dir, bad_instr)


def test_not_a_dataset_and_missing_split(tmp_path, bridge_dir):
    with pytest.raises(FileNotFoundError, match=r"no dataset_info\.json"):
        EpisodeSource(str(tmp_path), "bridge")
    with pytest.raises(DataError, match="no such split"):
        EpisodeSource(bridge_dir, "bridge", split="test")


@pytest.fixture(scope="module")
def bad_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return {
        "empty": fx.write_in_subprocess(str(root / "empty"), "bridge", [4, 0, 3]),
        "one_step": fx.write_in_subprocess(str(root / "one"), "bridge", [4, 1, 3]),
        "nan": fx.write_in_subprocess(
            str(root / "nan"), "bridge", [4, 5, 3], nan_episode=1, nan_step=2
        ),
        "rank": fx.write_in_subprocess(str(root / "rank"), "bad_rank", [3, 3]),
        "tfrecord": fx.write_in_subprocess(
            str(root / "tfr"), "bridge", [3, 4], file_format="tfrecord"
        ),
    }


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("empty", r"episode 1: empty episode \(0 steps\)"),
        ("one_step", r"episode 1: one-step episode"),
        ("nan", r"episode 1, step 2, key 'action': non-finite action values"),
    ],
)
def test_bad_episode_is_an_error_naming_it(bad_dirs, case, pattern):
    with pytest.raises(DataError, match=pattern) as e:
        EpisodeSource(bad_dirs[case], "bridge", use_index_cache=False)
    assert "synthetic_bridge" in str(e.value)


@pytest.mark.parametrize("case", ["empty", "one_step", "nan"])
def test_bad_episode_skipped_and_counted_when_spec_says_so(bad_dirs, case):
    src = EpisodeSource(bad_dirs[case], "bridge", skip_bad_episodes=True, use_index_cache=False)
    assert len(src) == 2 and len(src.skipped) == 1 and src.skipped[0]["record"] == 1
    # The remaining episodes are the right ones, in order.
    np.testing.assert_array_equal(src.image(1, 0), fx.frame(2, 0, 16, 16))
    stats = statistics.compute_statistics(src)
    assert stats["num_skipped_episodes"] == 1 and stats["num_episodes"] == 2
    assert np.all(np.isfinite(stats["action"]["mean"]))


def test_image_of_wrong_rank(bad_dirs):
    spec = specs.DatasetSpec(name="r", image_key="observation/image")
    with pytest.raises(
        DataError, match=r"image key 'observation/image' has shape \(16, 16\), expected \[H, W, 3\]"
    ):
        EpisodeSource(bad_dirs["rank"], spec)


def test_tfrecord_needs_conversion_then_reads_identically(bad_dirs, bridge_dir, tmp_path):
    with pytest.raises(DataError, match="convert_to_array_record"):
        EpisodeSource(bad_dirs["tfrecord"], "bridge")
    dst = str(tmp_path / "converted")
    fx.run_module_or_code(
        module_args=[
            "data_pipelines.convert_to_array_record",
            "--src",
            bad_dirs["tfrecord"],
            "--dst",
            dst,
        ]
    )
    src = EpisodeSource(dst, "bridge")
    assert src.lengths.tolist() == [3, 4]
    np.testing.assert_array_equal(src.image(1, 3), fx.frame(1, 3, 16, 16))
    np.testing.assert_array_equal(src.action(1, 3), fx.action(1, 3))
    # Converting onto an existing dataset is refused.
    with pytest.raises(RuntimeError, match="exists and is not empty"):
        fx.run_module_or_code(
            module_args=[
                "data_pipelines.convert_to_array_record",
                "--src",
                bad_dirs["tfrecord"],
                "--dst",
                dst,
            ]
        )


def test_index_cache_round_trip(bridge_dir):
    a = EpisodeSource(bridge_dir, "bridge")
    b = EpisodeSource(bridge_dir, "bridge")  # from the cached index
    assert a.lengths.tolist() == b.lengths.tolist() and a.records.tolist() == b.records.tolist()


def test_statistics_values(bridge_dir):
    src = EpisodeSource(bridge_dir, "bridge")
    stats = statistics.compute_statistics(src)
    all_actions = np.stack([fx.action(e, t) for e, n in enumerate([5, 3, 7, 2]) for t in range(n)])
    np.testing.assert_allclose(stats["action"]["mean"], all_actions.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["min"], all_actions.min(0))
    np.testing.assert_allclose(
        stats["action"]["quantiles"]["0.5"], np.quantile(all_actions, 0.5, axis=0), rtol=1e-5
    )
    assert stats["num_steps"] == 17 and stats["episode_length"] == {
        "min": 2,
        "mean": 4.25,
        "max": 7,
    }
    statistics.save_statistics(bridge_dir, stats)
    assert statistics.load_statistics(bridge_dir) == stats
