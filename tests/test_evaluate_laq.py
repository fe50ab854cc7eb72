"""The quantizer report: every measure present, baselines beside it, probes sane."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lapa_jax import evaluate_laq


def test_ridge_probe_recovers_a_linear_map_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    w = rng.normal(size=(6, 2))
    y = x @ w + 0.01 * rng.normal(size=(400, 2))
    r2 = evaluate_laq.ridge_r2(x[:300], y[:300], x[300:], y[300:], lam=1e-4)
    assert np.all(r2 > 0.99)
    noise = rng.normal(size=(400, 6))
    assert np.all(evaluate_laq.ridge_r2(noise[:300], y[:300], noise[300:], y[300:]) < 0.1)


def test_downsample_is_a_block_mean():
    img = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    d = evaluate_laq.downsample(img, 2)
    assert d.shape == (2, 2, 2, 1)
    assert d[0, 0, 0, 0] == np.mean([0, 1, 4, 5])


def test_asking_for_a_missing_checkpoint_step_names_the_ones_there(full_run):
    workdir, _ = full_run
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 4 .* has \["):
        evaluate_laq.Evaluator(workdir, step=4)


def test_report_on_a_tiny_run(full_run):
    workdir, _ = full_run
    report = evaluate_laq.main(["--workdir", workdir, "--max_pairs", "40", "--batch_size", "16"])
    for key in (
        "psnr",
        "psnr_copy_baseline",
        "delta_t_psnr",
        "psnr_changing_pixels",
        "psnr_changing_pixels_copy_baseline",
        "codes_used_per_position",
        "perplexity_per_position",
        "distinct_actions",
    ):
        assert key in report, key
    assert report["checkpoint_step"] == 6 and 0 < report["num_pairs"] <= 40
    assert len(report["codes_used_per_position"]) == 4
    assert all(1 <= c <= 8 for c in report["codes_used_per_position"])
    assert all(1.0 - 1e-6 <= p <= 8.0 for p in report["perplexity_per_position"])
    probe = report["probe"]
    for name in (
        "codes_onehot",
        "codes_onehot_first_1",  # the first of 4 tokens alone (no first_4: that is all)
        "latent_continuous",
        "pixel_difference_16x16",
        "frame_t_16x16",
        "codes_onehot_plus_frame_t",
        "pixel_difference_plus_frame_t",
    ):
        assert set(probe[name]) >= {"r2_xyz", "r2_gripper", "r2_per_dim"}
        assert len(probe[name]["r2_per_dim"]) == 4
    assert "codes_onehot_first_4" not in probe
    assert os.path.isfile(report["atlas"])
    with open(os.path.join(workdir, "eval", "laq_eval_0000006.json")) as f:
        assert json.load(f)["psnr"] == pytest.approx(report["psnr"])
    from PIL import Image

    with Image.open(report["atlas"]) as im:
        # 3 frames x (4 positions + all) rows; x_t, x_{t+H} and 8 codes per row.
        assert im.size == (2 + 10 * (16 + 2), 2 + 15 * (16 + 2))


def test_residual_kmeans_codes_carry_a_low_dimensional_target():
    """The probe-ceiling analysis: 4 x 8 residual codes fitted on the target itself
    must let a linear probe recover it (the ceiling the report compares against)."""
    from benchmarks import laq_probe_ceiling as ceiling

    rng = np.random.default_rng(0)
    y = rng.normal(size=(1200, 3))
    books = ceiling.fit_residual_kmeans(y[:800], k=8, stages=4)
    assert [b.shape for b in books] == [(8, 3)] * 4
    c_tr, c_te = ceiling.residual_codes(y[:800], books), ceiling.residual_codes(y[800:], books)
    assert c_tr.shape == (800, 4) and c_tr.max() < 8
    r2 = evaluate_laq.ridge_r2(
        evaluate_laq.onehot_codes(c_tr, 8), y[:800], evaluate_laq.onehot_codes(c_te, 8), y[800:]
    )
    assert np.all(r2 > 0.85)
    # One stage alone is much coarser: later stages add what the first missed.
    r2_first = evaluate_laq.ridge_r2(
        evaluate_laq.onehot_codes(c_tr[:, :1], 8),
        y[:800],
        evaluate_laq.onehot_codes(c_te[:, :1], 8),
        y[800:],
    )
    assert r2_first.mean() < r2.mean() - 0.2


def test_product_kmeans_gives_one_token_per_dimension_group():
    """Product codes (the oracle latents' layout): token i depends on dims group i only,
    and one 8-code token per dimension lets a probe recover each dimension."""
    from benchmarks import laq_probe_ceiling as ceiling

    rng = np.random.default_rng(1)
    y = rng.uniform(-1, 1, size=(1200, 4))
    books = ceiling.fit_product_kmeans(y[:800], k=8, tokens=4)
    assert [b.shape for b in books] == [(8, 1)] * 4
    c_tr, c_te = ceiling.product_codes(y[:800], books), ceiling.product_codes(y[800:], books)
    shuffled = y[800:].copy()
    shuffled[:, 1:] = rng.permutation(shuffled[:, 1:])
    assert np.array_equal(ceiling.product_codes(shuffled, books)[:, 0], c_te[:, 0])
    r2 = evaluate_laq.ridge_r2(
        evaluate_laq.onehot_codes(c_tr, 8), y[:800], evaluate_laq.onehot_codes(c_te, 8), y[800:]
    )
    assert np.all(r2 > 0.95)


def test_whiten_decorrelates_to_unit_variance_and_drops_null_directions():
    from benchmarks import laq_probe_ceiling as ceiling

    rng = np.random.default_rng(2)
    mix = np.array([[10.0, 0.0, 0.0], [3.0, 0.1, 0.0], [0.0, 0.0, 1.0]])
    x = rng.normal(size=(1000, 3)) @ mix
    x = np.concatenate([x, 2 * x[:, :1]], 1)  # a fourth, dependent column: rank 3
    a, b = ceiling.whiten(x[:800], x[800:])
    assert a.shape == (800, 3) and b.shape == (200, 3)
    np.testing.assert_allclose(np.cov(a, rowvar=False, bias=True), np.eye(3), atol=1e-6)
    # The test rows go through the train set's map: near, not exactly, unit variance.
    assert np.all(np.abs(b.std(0) - 1) < 0.2)
    assert ceiling.whiten(x[:800], x[800:], n=2)[0].shape == (800, 2)


def test_probe_ceiling_report_on_a_tiny_run(full_run, tmp_path):
    from benchmarks import laq_probe_ceiling as ceiling

    workdir, _ = full_run
    out = ceiling.main(
        ["--workdir", workdir, "--max_pairs", "40", "--out", str(tmp_path / "c.json")]
    )
    assert out["checkpoint_step"] == 6
    assert sorted(out["codes_first_positions"]) == ["1", "2", "3", "4"]
    for key in ("codes", "latent_continuous", "frame_t", "codes_plus_frame_t", "pixel_difference"):
        assert out[key]["r2_xyz"] <= 1.0, key
    assert out["posthoc_codes_of_true_action"]["r2_xyz"] <= 1.0
    assert out["posthoc_codes_of_whitened_latent"]["r2_xyz"] <= 1.0
    assert sorted(out["posthoc_codes_of_whitened_pixel_difference_pcs"]) == ["16", "4", "64"]
    for key in ("latent_action_fit", "pixel_difference_action_fit", "true_action"):
        assert out[f"posthoc_product_codes_of_{key}"]["r2_xyz"] <= 1.0, key
    assert sorted(out["posthoc_product_codes_of_latent_pcs"]) == ["16", "4"]
    with open(tmp_path / "c.json") as f:
        assert json.load(f)["codes"] == out["codes"]


def test_dual_ridge_matches_the_primal_one_with_fewer_or_more_features_than_pairs():
    rng = np.random.default_rng(3)
    for dims in (5, 300):
        x = rng.normal(size=(200, dims)) * rng.uniform(0.5, 3.0, size=dims)
        y = x[:, :3] @ rng.normal(size=(3, 2)) + 0.1 * rng.normal(size=(200, 2)) + 4.0
        primal = evaluate_laq.ridge_predict(x[:150], y[:150], x[150:], dual=False)
        dual = evaluate_laq.ridge_predict(x[:150], y[:150], x[150:], dual=True)
        np.testing.assert_allclose(dual, primal, atol=1e-6)


def test_encoder_probe_report_on_a_tiny_run(full_run, tmp_path):
    from benchmarks import laq_encoder_probe as encoder_probe

    workdir, _ = full_run
    out = encoder_probe.main(
        ["--workdir", workdir, "--max_pairs", "40", "--out", str(tmp_path / "e.json")]
    )
    probes = out["probes"]
    for stage in ("patch_embed", "spatial_0", "temporal_0", "ln_final", "to_latent"):
        assert f"{stage}/grid" in probes and f"{stage}/pool4" in probes, stage
    # The tiny model: a 4x4 grid of width 32, 4 latent tokens of 8 dimensions.
    assert probes["ln_final/grid"]["dims"] == 4 * 4 * 32
    assert probes["latent"]["dims"] == probes["latent_unit"]["dims"] == 4 * 8
    assert probes["conv_reduce_top8_components"]["dims"] == 8
    assert all(p["r2_xyz"] <= 1.0 for p in probes.values())
    with open(tmp_path / "e.json") as f:
        assert json.load(f)["probes"] == probes
