"""The issue-8 loss terms of the LAQ task, against a direct numpy computation."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments import laq as laq_experiment
from lapa_jax.tasks.laq import LAQTask, cross_views, diff_nmse, translate


def _task(**loss):
    c = laq_experiment.get_config("tiny")
    c.loss.update(loss)
    return LAQTask(c)


def _batch():
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.uniform(0, 1, (4, 1, 16, 16, 3)).astype(np.float32), 2, axis=1)
    frames[:, 1, 4:8, 4:8] += 0.5  # a 4x4 block changes in every pair: 1/16 of the pixels
    return {"frames": np.clip(frames, 0, 1)}


def _loss_and_forward(task, batch):
    """The task's loss and the model's training pass with the same parameters and noise."""
    params, ts = task.init(jax.random.key(0), batch)
    params = nn.meta.unbox(params)
    loss, (metrics, _) = task.loss(params, ts, batch, jax.random.key(1), 0)
    out = task.model.apply(
        {"params": params}, batch["frames"], train=True, rngs={"noise": jax.random.key(1)}
    )
    return params, ts, loss, metrics, out


def test_changed_pixel_weighting_matches_a_direct_computation():
    task = _task(changed_weight=3.0)
    batch = _batch()
    _, _, loss, metrics, out = _loss_and_forward(task, batch)
    recon = out["recon"]
    sq = ((np.asarray(recon) - batch["frames"][:, 1]) ** 2).mean(-1)
    changed = np.abs(batch["frames"][:, 1] - batch["frames"][:, 0]).sum(-1) > 0.05
    w = 1 + 3.0 * changed
    assert float(metrics["fraction_changed"]) == pytest.approx(changed.mean())
    assert changed.mean() == pytest.approx(1 / 16, abs=0.01)
    np.testing.assert_allclose(float(loss), (w * sq).sum() / w.sum(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["recon_mse"]), sq.mean(), rtol=1e-4)


def test_usage_entropy_term_is_added_to_the_loss():
    plain, reg = _task(), _task(usage_entropy_weight=0.5)
    batch = _batch()
    params, ts = plain.init(jax.random.key(0), batch)
    params = nn.meta.unbox(params)
    l0, _ = plain.loss(params, ts, batch, jax.random.key(1), 0)
    l1, (m1, _) = reg.loss(params, ts, batch, jax.random.key(1), 0)
    assert float(m1["usage_entropy_gap"]) >= 0
    np.testing.assert_allclose(
        float(l1), float(l0) + 0.5 * float(m1["usage_entropy_gap"]), rtol=1e-5
    )


def test_usage_entropy_needs_nsvq():
    c = laq_experiment.get_config("tiny")
    c.model.quantizer = "fsq"
    c.loss.usage_entropy_weight = 0.1
    with pytest.raises(ValueError, match="needs an NSVQ quantizer"):
        LAQTask(c)


def _rvq_one_update(c):
    """One loss and after_update of a tiny rvq task: (params, task state, aux, and the
    updated params, task state and metrics)."""
    c.model.quantizer = "rvq"
    task = LAQTask(c)
    batch = _batch()
    params, ts = task.init(jax.random.key(0), batch)
    params = nn.meta.unbox(params)
    _, (_, aux) = task.loss(params, ts, batch, jax.random.key(1), 0)
    return params, ts, aux, *task.after_update(params, ts, aux, jax.random.key(2), 0)


def test_rvq_dead_codes_are_replaced_per_stage_from_that_stage_residuals():
    """Stage s's starved codes are re-seeded from stage s's own inputs (its residuals),
    not from another stage's, and each stage keeps its own usage record."""
    c = laq_experiment.get_config("tiny")
    c.dead_code.update(dict(source="latents", window=1, threshold=0.5, perturb=0.0))
    params, ts, aux, new_params, new_ts, metrics = _rvq_one_update(c)
    assert ts["usage"]["batches_used"].shape == (4, 8)
    old_cb = np.asarray(params["quantizer"]["codebook"])
    new_cb = np.asarray(new_params["quantizer"]["codebook"])
    inputs = np.asarray(aux["quantizer_inputs"])  # [B, stages, D]
    codes = np.asarray(aux["codes"])
    replaced = 0
    for s in range(4):
        for k in range(8):
            if k in codes[:, s]:
                np.testing.assert_array_equal(new_cb[s, k], old_cb[s, k])
            else:  # unused in this one-batch window: now one of this stage's inputs
                dist = np.abs(inputs[:, s] - new_cb[s, k]).max(-1)
                assert dist.min() < 1e-5
                replaced += 1
    assert replaced > 0 and int(new_ts["usage"]["replaced_total"].sum()) == replaced
    assert float(metrics["dead_codes_replaced"]) == replaced


def test_translate_moves_both_frames_and_repeats_the_border():
    frames = np.random.default_rng(0).uniform(0, 1, (3, 2, 16, 16, 3)).astype(np.float32)
    shifts = np.array([[0, 0], [2, -3], [-4, 4]], np.int32)
    out = np.asarray(translate(frames, shifts, 4))
    np.testing.assert_array_equal(out[0], frames[0])
    # out[y, x] = in[y + dy, x + dx] wherever that is inside the image, for both frames
    np.testing.assert_array_equal(out[1, :, :14, 3:], frames[1, :, 2:, :13])
    np.testing.assert_array_equal(out[2, :, 4:, :12], frames[2, :, :12, 4:])
    # outside, the nearest border pixel: rows below the image repeat its last row
    np.testing.assert_array_equal(out[1, :, 14:, 3:], np.repeat(frames[1, :, 15:, :13], 2, 1))


def test_cross_view_loss_decodes_the_latent_of_one_view_onto_another():
    """The latent comes from view A, the decoder starts from view B's x_t and is scored
    on view B's x_{t+H}: recomputed here from the same random views."""
    task = _task(view_shift=3)
    batch = _batch()
    params, ts = task.init(jax.random.key(0), batch)
    params = nn.meta.unbox(params)
    loss, _ = task.loss(params, ts, batch, jax.random.key(1), 0)
    rng, k_views = jax.random.split(jax.random.key(1))
    view_a, view_b = cross_views(batch["frames"], k_views, 3)
    assert not np.allclose(np.asarray(view_a), np.asarray(view_b))
    recon = task.model.apply(
        {"params": params},
        view_a,
        train=True,
        decode_first_BHWC=view_b[:, 0],
        rngs={"noise": rng},
    )["recon"]
    expected = float(((np.asarray(recon) - np.asarray(view_b[:, 1])) ** 2).mean())
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # ... and it is not the same-view loss
    plain, _ = _task().loss(params, ts, batch, jax.random.key(1), 0)
    assert abs(float(plain) - float(loss)) > 1e-6


@pytest.mark.parametrize("shift", [-1, 8])
def test_view_shift_out_of_range_is_refused(shift):
    with pytest.raises(ValueError, match=r"loss\.view_shift"):
        _task(view_shift=shift)


def test_frame_difference_head_loss_matches_a_direct_computation():
    c = laq_experiment.get_config("tiny")
    c.model.diff_head_size = 4
    c.loss.diff_weight = 0.5
    task, plain = LAQTask(c), _task()
    batch = _batch()
    params, ts, loss, metrics, out = _loss_and_forward(task, batch)
    # The head is linear in the quantized latent and sees nothing else.
    head = params["diff_head"]
    flat = np.asarray(out["quantized"]).reshape(4, -1)
    pred = (flat @ np.asarray(head["kernel"]) + np.asarray(head["bias"])).reshape(4, 4, 4, 3)
    np.testing.assert_allclose(np.asarray(out["diff"]), pred, rtol=1e-4, atol=1e-5)
    diff = batch["frames"][:, 1] - batch["frames"][:, 0]
    pooled = diff.reshape(4, 4, 4, 4, 4, 3).mean((2, 4))
    nmse = ((pred - pooled) ** 2).mean() / (pooled**2).mean()
    np.testing.assert_allclose(float(metrics["diff_nmse"]), nmse, rtol=1e-3)
    # The rest of the loss is the plain reconstruction loss of the same parameters.
    plain_params = {k: v for k, v in params.items() if k != "diff_head"}
    l0, _ = plain.loss(plain_params, ts, batch, jax.random.key(1), 0)
    np.testing.assert_allclose(float(loss), float(l0) + 0.5 * nmse, rtol=1e-4)
    # Predicting no change scores 1, the exact pooled difference 0.
    first, target = (jax.numpy.asarray(batch["frames"][:, i]) for i in (0, 1))
    assert float(diff_nmse(jax.numpy.zeros_like(pooled), first, target)) == pytest.approx(1.0)
    assert float(diff_nmse(jax.numpy.asarray(pooled), first, target)) == pytest.approx(0.0)


@pytest.mark.parametrize("head, weight", [(0, 0.5), (4, 0.0), (4, -1.0)])
def test_frame_difference_head_and_weight_must_agree(head, weight):
    c = laq_experiment.get_config("tiny")
    c.model.diff_head_size, c.loss.diff_weight = head, weight
    with pytest.raises(ValueError, match=r"loss\.diff_weight"):
        LAQTask(c)


def test_rvq_codebook_ema_moves_each_stage_towards_its_own_residuals():
    c = laq_experiment.get_config("tiny")
    c.dead_code.enabled = False
    c.codebook_ema = 0.5
    params, _, aux, new_params, _, _ = _rvq_one_update(c)
    old_cb = np.asarray(params["quantizer"]["codebook"])
    new_cb = np.asarray(new_params["quantizer"]["codebook"])
    inputs = np.asarray(aux["quantizer_inputs"])  # [B, stages, D]
    codes = np.asarray(aux["codes"])
    moved = 0
    for s in range(old_cb.shape[0]):
        for k in range(old_cb.shape[1]):
            mine = codes[:, s] == k
            if mine.any():
                want = 0.5 * old_cb[s, k] + 0.5 * inputs[mine, s].mean(0)
                np.testing.assert_allclose(new_cb[s, k], want, rtol=1e-5, atol=1e-6)
                moved += 1
            else:
                np.testing.assert_array_equal(new_cb[s, k], old_cb[s, k])
    assert moved > 0


@pytest.mark.parametrize("value, quantizer", [(1.0, "rvq"), (-0.1, "nsvq"), (0.5, "fsq")])
def test_codebook_ema_rejects_bad_values(value, quantizer):
    c = laq_experiment.get_config("tiny")
    c.model.quantizer = quantizer
    c.codebook_ema = value
    with pytest.raises(ValueError, match="codebook_ema"):
        LAQTask(c)
