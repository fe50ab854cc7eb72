"""NSVQ, FSQ and dead-code replacement."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapa_jax.models import quantizers as Q


@pytest.fixture(scope="module")
def nsvq():
    m = Q.NSVQ(num_codes=8, dim=4)
    z = jax.random.normal(jax.random.key(0), (16, 3, 4))
    params = nn.meta.unbox(
        m.init({"params": jax.random.key(1), "noise": jax.random.key(2)}, z, train=True)
    )
    return m, params, z


def test_nsvq_inference_returns_the_exact_nearest_code(nsvq):
    m, params, z = nsvq
    out = m.apply(params, z, train=False)
    codebook = np.asarray(params["params"]["codebook"])
    dist = ((np.asarray(z)[:, :, None, :] - codebook[None, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(out.codes), dist.argmin(-1))
    assert out.codes.dtype == jnp.int32 and out.codes.shape == (16, 3)
    np.testing.assert_array_equal(np.asarray(out.quantized), codebook[np.asarray(out.codes)])
    np.testing.assert_array_equal(
        np.asarray(m.apply(params, out.codes, method=Q.NSVQ.lookup)), np.asarray(out.quantized)
    )


def test_nsvq_training_output_distance_equals_quantization_error(nsvq):
    m, params, z = nsvq
    outs = [m.apply(params, z, train=True, rngs={"noise": jax.random.key(s)}) for s in range(200)]
    q_err = np.linalg.norm(np.asarray(z - outs[0].hard), axis=-1)
    for o in outs[:5]:
        np.testing.assert_allclose(
            np.linalg.norm(np.asarray(o.quantized - z), axis=-1), q_err, rtol=1e-4
        )
    # The noise is zero-mean: the average output approaches z.
    mean = np.mean([np.asarray(o.quantized) for o in outs], axis=0)
    assert np.abs(mean - np.asarray(z)).mean() < 0.25 * q_err.mean()


def test_nsvq_gradients_reach_input_and_codebook(nsvq):
    m, params, z = nsvq

    def f(p, z):
        return jnp.sum(m.apply(p, z, train=True, rngs={"noise": jax.random.key(3)}).quantized ** 2)

    g_params, g_z = jax.grad(f, argnums=(0, 1))(params, z)
    g_cb = np.asarray(g_params["params"]["codebook"])
    used = np.unique(np.asarray(m.apply(params, z, train=False).codes))
    assert np.abs(g_cb[used]).sum(-1).min() > 0  # every used code gets a gradient
    unused = np.setdiff1d(np.arange(8), used)
    assert np.all(g_cb[unused] == 0)
    assert np.abs(np.asarray(g_z)).sum() > 0


def test_cosine_nsvq_uses_unit_vectors_and_angular_nearest_code():
    m = Q.NSVQ(num_codes=8, dim=4, normalize=True)
    z = 5 * jax.random.normal(jax.random.key(0), (16, 3, 4))
    params = nn.meta.unbox(
        m.init({"params": jax.random.key(1), "noise": jax.random.key(2)}, z, train=True)
    )
    out = m.apply(params, z, train=False)
    raw = np.asarray(params["params"]["codebook"])
    unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
    zn = np.asarray(z) / np.linalg.norm(np.asarray(z), axis=-1, keepdims=True)
    np.testing.assert_array_equal(np.asarray(out.codes), (zn @ unit.T).argmax(-1))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out.quantized), axis=-1), 1.0, rtol=1e-5)
    # Scaling a latent does not change its code.
    np.testing.assert_array_equal(
        np.asarray(m.apply(params, 0.01 * z, train=False).codes), np.asarray(out.codes)
    )
    assert out.logits.shape == (16, 3, 8)


def test_usage_entropy_gap_is_zero_for_uniform_use_and_log_k_for_collapse():
    from lapa_jax.tasks.laq import usage_entropy_gap

    k = 8
    sharp = 100.0 * (np.eye(k)[np.arange(64) % k] - 1.0)  # [64, K], each row one code
    uniform = jnp.asarray(sharp[:, None, :])  # [B, L=1, K]
    assert float(usage_entropy_gap(uniform, 1.0)) == pytest.approx(0.0, abs=1e-5)
    collapsed = jnp.asarray(np.repeat(sharp[:1], 64, 0)[:, None, :])
    assert float(usage_entropy_gap(collapsed, 1.0)) == pytest.approx(np.log(k), rel=1e-4)


def test_fsq_codes_lookup_and_straight_through():
    m = Q.FSQ(levels=(3, 4, 2), dim=5)
    z = 3 * jax.random.normal(jax.random.key(0), (32, 4, 5))
    params = nn.meta.unbox(m.init(jax.random.key(1), z, train=False))
    out = m.apply(params, z, train=False)
    codes = np.asarray(out.codes)
    assert codes.min() >= 0 and codes.max() < 24 and m.codebook_size == 24
    np.testing.assert_allclose(
        np.asarray(m.apply(params, out.codes, method=Q.FSQ.lookup)),
        np.asarray(out.quantized),
        atol=1e-5,
    )
    g = jax.grad(lambda z: jnp.sum(m.apply(params, z, train=True).quantized ** 2))(z)
    assert np.abs(np.asarray(g)).sum() > 0
    # All 24 codes are reachable.
    big = 3 * jax.random.normal(jax.random.key(2), (4096, 1, 5))
    assert len(np.unique(np.asarray(m.apply(params, big, train=False).codes))) > 12


def run_windows(codebook, codes_fn, steps, source="live_codes", until=-1, window=5):
    usage = Q.init_usage_state(codebook.shape[0])
    latents = jnp.full((6, codebook.shape[1]), 7.0)
    for s in range(steps):
        codebook, usage = Q.replace_dead_codes(
            codebook,
            usage,
            codes_fn(s),
            latents,
            jnp.int32(s),
            jax.random.key(s),
            window=window,
            threshold=0.5,
            until_step=until,
            source=source,
            perturb=0.01,
        )
    return codebook, usage


def test_starved_codes_are_replaced_by_perturbed_live_codes():
    codebook = jnp.arange(16, dtype=jnp.float32).reshape(4, 4)
    only_code_0 = lambda s: jnp.zeros((2, 3), jnp.int32)  # noqa: E731
    new, usage = run_windows(codebook, only_code_0, steps=5)
    new = np.asarray(new)
    np.testing.assert_array_equal(new[0], np.asarray(codebook[0]))  # the live code is kept
    for k in (1, 2, 3):
        assert np.abs(new[k] - np.asarray(codebook[0])).max() < 0.2  # a copy of code 0, perturbed
        assert not np.array_equal(new[k], np.asarray(codebook[0]))
    assert int(usage["replaced_total"]) == 3 and int(usage["last_replaced"]) == 3
    assert int(usage["window_steps"]) == 0 and not np.asarray(usage["batches_used"]).any()


def test_replacement_from_latents_and_schedule_stop():
    codebook = jnp.arange(16, dtype=jnp.float32).reshape(4, 4)
    codes = lambda s: jnp.array([[0, 1, 0]], jnp.int32)  # noqa: E731
    new, usage = run_windows(codebook, codes, steps=5, source="latents")
    assert np.abs(np.asarray(new)[2:] - 7.0).max() < 0.5 and int(usage["replaced_total"]) == 2
    np.testing.assert_array_equal(np.asarray(new)[:2], np.asarray(codebook)[:2])
    # until_step=3: the first window ends at step 4, after the schedule stopped.
    new, usage = run_windows(codebook, codes, steps=5, until=3)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(codebook))
    assert int(usage["replaced_total"]) == 0


def test_well_used_codes_are_never_replaced():
    codebook = jnp.arange(16, dtype=jnp.float32).reshape(4, 4)
    all_codes = lambda s: jnp.array([[0, 1, 2, 3]], jnp.int32)  # noqa: E731
    new, usage = run_windows(codebook, all_codes, steps=10)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(codebook))
    assert int(usage["replaced_total"]) == 0


def test_residual_nsvq_stages_quantize_what_the_previous_left():
    m = Q.ResidualNSVQ(num_codes=8, dim=4, num_stages=3)
    z = jax.random.normal(jax.random.key(0), (32, 1, 4))
    params = nn.meta.unbox(
        m.init({"params": jax.random.key(1), "noise": jax.random.key(2)}, z, train=True)
    )
    cb = np.asarray(params["params"]["codebook"])  # [stages, K, D]
    assert cb.shape == (3, 8, 4)
    out = m.apply(params, z, train=False)
    inputs, hard, codes = map(np.asarray, (out.inputs, out.hard, out.codes))
    assert codes.shape == (32, 3) and codes.dtype == np.int32
    np.testing.assert_allclose(inputs[:, 0], np.asarray(z)[:, 0], rtol=1e-6)
    for s in range(3):
        dist = ((inputs[:, s, None, :] - cb[s][None]) ** 2).sum(-1)
        np.testing.assert_array_equal(codes[:, s], dist.argmin(-1))  # its own codebook
        np.testing.assert_allclose(hard[:, s], cb[s][codes[:, s]], rtol=1e-6)
        if s + 1 < 3:
            np.testing.assert_allclose(inputs[:, s + 1], inputs[:, s] - hard[:, s], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.quantized), hard)
    np.testing.assert_array_equal(
        np.asarray(m.apply(params, out.codes, method=Q.ResidualNSVQ.lookup)), hard
    )
    # The summed code vectors, the approximation of z, are linear in the one-hot codes.
    onehot = np.eye(8)[codes].reshape(32, -1)
    np.testing.assert_allclose(onehot @ cb.reshape(-1, 4), hard.sum(1), rtol=1e-5)
    # Training: each stage's output sits at its quantization error from its input.
    tr = m.apply(params, z, train=True, rngs={"noise": jax.random.key(3)})
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(tr.quantized) - inputs, axis=-1),
        np.linalg.norm(inputs - hard, axis=-1),
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="one vector per sample"):
        m.apply(params, jnp.zeros((2, 2, 4)), train=False)


def test_ema_codebook_update_moves_used_codes_towards_their_cluster_means():
    codebook = jnp.array([[0.0, 0.0], [10.0, 10.0], [5.0, -5.0]])
    latents = jnp.array([[1.0, 0.0], [3.0, 2.0], [9.0, 11.0]])
    codes = jnp.array([0, 0, 1])
    new = np.asarray(Q.ema_codebook_update(codebook, codes, latents, decay=0.75))
    np.testing.assert_allclose(new[0], 0.75 * np.zeros(2) + 0.25 * np.array([2.0, 1.0]))
    np.testing.assert_allclose(new[1], 0.75 * np.array([10.0, 10.0]) + 0.25 * np.array([9.0, 11.0]))
    np.testing.assert_array_equal(new[2], np.asarray(codebook[2]))  # unused: untouched
    # Repeated on the same assignment it converges to the means (k-means' update).
    cb = codebook
    for _ in range(200):
        cb = Q.ema_codebook_update(cb, codes, latents, decay=0.9)
    np.testing.assert_allclose(np.asarray(cb)[:2], [[2.0, 1.0], [9.0, 11.0]], atol=1e-5)
