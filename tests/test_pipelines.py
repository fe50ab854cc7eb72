"""Frame-pair and step pipelines: offsets, images, determinism, sharding and resume."""

from __future__ import annotations

import numpy as np
import pytest

from lapa_jax.data import pipelines as P
from lapa_jax.data.sources import EpisodeSource
from tests import rlds_fixtures as fx

LENGTHS = [5, 3, 7, 2]


@pytest.fixture(scope="module")
def bridge(bridge_dir):
    return EpisodeSource(bridge_dir, "bridge")


def brute_force_pairs(lengths, gap, clip):
    pairs = []
    for e, n in enumerate(lengths):
        for t in range(n):
            if clip and t < n - 1:
                pairs.append((e, t, min(t + gap, n - 1)))
            elif not clip and t + gap <= n - 1:
                pairs.append((e, t, t + gap))
    return pairs


@pytest.mark.parametrize("gap", [1, 2, 3, 6])
@pytest.mark.parametrize("clip", [True, False])
def test_frame_pair_offsets_match_brute_force(bridge, gap, clip):
    src = P.FramePairSource(bridge, gap, P.ImageConfig(size=16, dtype="uint8"), clip_to_last=clip)
    expected = brute_force_pairs(LENGTHS, gap, clip)
    assert len(src) == len(expected)
    assert [src.pair_indices(i) for i in range(len(src))] == expected
    for i in (0, len(src) // 2, len(src) - 1):
        e, t, t2 = expected[i]
        item = src[i]
        np.testing.assert_array_equal(item["frames"][0], fx.frame(e, t, 16, 16))
        np.testing.assert_array_equal(item["frames"][1], fx.frame(e, t2, 16, 16))
        assert item["gap"] == t2 - t
        # The actions taken between the two frames, zero-padded where clipped.
        for j in range(gap):
            if t + j < t2:
                assert item["action_mask"][j]
                np.testing.assert_array_equal(item["actions"][j], fx.action(e, t + j))
            else:
                assert not item["action_mask"][j] and not item["actions"][j].any()


def test_no_pairs_is_an_error(bridge):
    with pytest.raises(ValueError, match="no valid frame pairs with gap 9"):
        P.FramePairSource(bridge, 9, clip_to_last=False)


def test_image_config_and_dtypes(bridge):
    f = P.FramePairSource(bridge, 1, P.ImageConfig(size=8, dtype="float32"))[0]["frames"]
    assert f.shape == (2, 8, 8, 3) and f.dtype == np.float32 and f.min() >= 0.0 and f.max() <= 1.0
    with pytest.raises(ValueError, match="resize_mode"):
        P.ImageConfig(resize_mode="stretch")
    with pytest.raises(ValueError, match="dtype"):
        P.ImageConfig(dtype="float16")
    with pytest.raises(ValueError, match="size"):
        P.ImageConfig(size=0)


def test_square_image_crop_and_pad():
    img = fx.frame(3, 4, 12, 20)  # left half of channel 2 bright
    crop = P.square_image(img, 12, "crop")
    assert crop.shape == (12, 12, 3)
    # Centre crop keeps columns 4..15: 6 bright, 6 dark.
    assert (crop[:, :, 2] == 200).sum(axis=1).tolist() == [6] * 12
    pad = P.square_image(img, 20, "pad")
    assert pad.shape == (20, 20, 3)
    assert not pad[:4].any() and not pad[16:].any()  # black bars top and bottom
    np.testing.assert_array_equal(pad[4:16], img)
    assert P.square_image(img, 6, "crop").shape == (6, 6, 3)


def test_non_square_source_through_pipeline(oxe_dir):
    src = EpisodeSource(oxe_dir, "oxe_bridge")
    item = P.StepSource(src, P.ImageConfig(size=12, dtype="uint8"))[5]
    e, t = 1, 1  # lengths [4, 6, 3]: flat index 5 is episode 1, step 1
    assert item["episode"] == e and item["t"] == t
    np.testing.assert_array_equal(item["image"], P.square_image(fx.frame(e, t, 12, 20), 12, "crop"))
    assert item["instruction"] == "do task 1" and item["action"].shape == (7,)


def test_frame_gap_in_frames_or_seconds():
    assert P.frame_gap_in_frames(3, None, None) == 3
    assert P.frame_gap_in_frames(None, 0.6, 30) == 18
    with pytest.raises(ValueError, match="not both"):
        P.frame_gap_in_frames(3, 0.5, 10)
    with pytest.raises(ValueError, match="positive fps"):
        P.frame_gap_in_frames(None, 0.5, None)
    with pytest.raises(ValueError, match=">= 1 frame"):
        P.frame_gap_in_frames(0, None, None)


def take(it, n):
    return [next(it) for _ in range(n)]


def loader(source, **kw):
    cfg = dict(global_batch_size=4, seed=0, shard_index=0, shard_count=1)
    cfg.update(kw)
    return P.make_loader(source, P.LoaderConfig(**cfg))


@pytest.fixture(scope="module")
def pairs(bridge):
    return P.FramePairSource(bridge, 2, P.ImageConfig(size=8, dtype="uint8"))


def keys(batches):
    return [list(zip(b["episode"].tolist(), b["t"].tolist(), strict=True)) for b in batches]


def test_same_seed_same_batches(pairs):
    a = keys(take(iter(loader(pairs, seed=3)), 6))
    b = keys(take(iter(loader(pairs, seed=3)), 6))
    c = keys(take(iter(loader(pairs, seed=4)), 6))
    assert a == b and a != c


def test_epochs_cover_every_pair_once_and_reshuffle(pairs):
    n = len(pairs)  # 13 pairs
    batches = take(iter(loader(pairs, global_batch_size=1, seed=1)), 2 * n)
    flat = [k for b in keys(batches) for k in b]
    all_pairs = {pairs.pair_indices(i)[:2] for i in range(n)}
    assert set(flat[:n]) == all_pairs and set(flat[n:]) == all_pairs
    assert flat[:n] != flat[n:]  # the second epoch is shuffled anew


def test_host_shards_are_disjoint_and_cover_the_data(pairs):
    n = len(pairs)
    shards = []
    for host in range(3):
        ds = loader(
            pairs,
            global_batch_size=3,
            shard_index=host,
            shard_count=3,
            num_epochs=1,
            drop_remainder=False,
        )
        shards.append([k for b in keys(list(ds)) for k in b])
        assert all(len(b) <= 1 for b in keys(list(ds)))  # per-host batch = 3 / 3 hosts
    seen = [k for s in shards for k in s]
    assert len(seen) == n and len(set(seen)) == n
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(shards[a]) & set(shards[b])


def test_batch_must_divide_over_hosts(pairs):
    with pytest.raises(ValueError, match="multiple of the number of hosts"):
        loader(pairs, global_batch_size=5, shard_index=0, shard_count=2)


def test_resume_from_state_mid_epoch(pairs):
    it = iter(loader(pairs, seed=5))
    take(it, 2)  # into the first epoch (13 pairs, batch 4)
    state = it.get_state()
    expected = take(it, 5)  # crosses an epoch boundary
    it2 = iter(loader(pairs, seed=5))
    it2.set_state(state)
    got = take(it2, 5)
    for x, y in zip(expected, got, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_orbax_checkpoint_of_iterator(pairs, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    it = iter(loader(pairs, seed=6))
    take(it, 3)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data",))
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = take(it, 3)
    it2 = iter(loader(pairs, seed=6))
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    got = take(it2, 3)
    assert keys(expected) == keys(got)
    mngr.close()


def test_step_loader_batches_strings_and_actions(bridge):
    steps = P.StepSource(bridge, P.ImageConfig(size=8))
    assert len(steps) == sum(LENGTHS)
    b = next(iter(loader(steps, global_batch_size=6)))
    assert b["image"].shape == (6, 8, 8, 3) and b["image"].dtype == np.float32
    assert b["action"].shape == (6, 7)
    assert all(s.startswith("do task") for s in b["instruction"].tolist())
    for e, t, a in zip(b["episode"], b["t"], b["action"], strict=True):
        np.testing.assert_array_equal(a, fx.action(int(e), int(t)))
