"""Quantile action bins (stage 3's binned head): equal-mass bins, decoding to bin
centres within half a bin, a binary gripper, JSON round trips and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from lapa_jax.action_bins import ActionBins


def _actions(n: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(0)
    xyz = np.stack([rng.normal(0, 0.3, n), rng.uniform(-1, 1, n), rng.exponential(0.2, n)], 1)
    grip = np.where(rng.random(n) < 0.4, 1.0, -1.0)
    return np.concatenate([xyz, grip[:, None]], 1).astype(np.float32)


def test_quantile_bins_hold_equal_mass_and_decode_to_centres():
    a = _actions()
    bins = ActionBins.fit(a, num_bins=16, gripper_index=3)
    t = bins.encode(a)
    assert t.dtype == np.int32 and t.shape == a.shape
    for d in range(3):
        counts = np.bincount(t[:, d], minlength=16)
        assert counts.min() > 0.8 * len(a) / 16 and counts.max() < 1.2 * len(a) / 16
        # Every action lies inside its bin, so its decoded centre is within half a bin.
        e = bins.edges[d]
        width = e[t[:, d] + 1] - e[t[:, d]]
        err = np.abs(bins.decode(t)[:, d] - a[:, d])
        assert (err <= width / 2 + 1e-6).all()
        # Monotonic: a larger action never gets a smaller token.
        order = np.argsort(a[:, d])
        assert (np.diff(t[order, d]) >= 0).all()
    np.testing.assert_array_equal(t[:, 3], a[:, 3] > 0)
    np.testing.assert_array_equal(bins.decode(t)[:, 3], a[:, 3])  # the class medians: -1, 1
    assert bins.max_bins == 16 and bins.bins(3) == 2


def test_out_of_range_constant_dimension_and_json_round_trip(tmp_path):
    a = _actions(500)
    a[:, 1] = 0.25  # a dimension that never moves
    bins = ActionBins.fit(a, num_bins=8, gripper_index=3)
    assert bins.bins(1) == 1
    np.testing.assert_allclose(bins.decode(bins.encode(a))[:, 1], 0.25, atol=1e-5)
    far = np.array([[100.0, 0.25, -100.0, 5.0]], np.float32)
    assert bins.encode(far)[0].tolist() == [7, 0, 0, 1]
    path = bins.save(str(tmp_path / "bins.json"))
    again = ActionBins.load(path)
    np.testing.assert_array_equal(again.encode(a), bins.encode(a))
    np.testing.assert_array_equal(again.decode(bins.encode(a)), bins.decode(bins.encode(a)))


def test_bad_input():
    a = _actions(100)
    with pytest.raises(ValueError, match="num_bins must be >= 2"):
        ActionBins.fit(a, num_bins=1)
    bad = a.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="row 7, dimension 2"):
        ActionBins.fit(bad)
    with pytest.raises(ValueError, match="N >= 1"):
        ActionBins.fit(np.zeros((0, 4)))
    bins = ActionBins.fit(a, num_bins=4, gripper_index=3)
    with pytest.raises(ValueError, match=r"expected actions \[N, 4\]"):
        bins.encode(a[:, :3])
    with pytest.raises(ValueError, match="dimension 0 has 4 bins"):
        bins.decode(np.array([[4, 0, 0, 0]]))
    with pytest.raises(ValueError, match="not an action-bins record"):
        ActionBins.from_json({"gripper_index": 3})
