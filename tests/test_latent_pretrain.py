"""Stage 2: the VLM's attention structure, decoding, the tokenizer, training on a
latent-labelled dataset, sharding equivalence and the large configs by shape."""

from __future__ import annotations

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import latent_pretrain as lp_experiment
from lapa_jax.models.vlm import VLM, VLMConfig, prefix_lm_mask
from lapa_jax.tasks.latent_pretrain import LatentPretrainTask, latent_metrics
from lapa_jax.text import Tokenizer, prompt_text
from lapa_jax.trainer import Trainer

TINY = dict(lp_experiment.get_config("tiny").model.to_dict(), vocab_size=40)


def _init(**kw):
    cfg = VLMConfig.from_dict({**TINY, **kw})
    model = VLM(cfg)
    b, t = 3, cfg.max_text_len
    img = jax.random.uniform(jax.random.key(0), (b, 16, 16, 3))
    txt = jax.random.randint(jax.random.key(1), (b, t), 4, 40)
    mask = jnp.arange(t)[None] < jnp.array([[5], [t], [1]])
    codes = jax.random.randint(jax.random.key(2), (b, 4), 0, 8)
    params = model.init(jax.random.key(3), img, txt, mask, codes)
    return model, params, (img, txt, mask, codes)


def test_prefix_lm_mask():
    valid = jnp.array([[True, True, False, True, True]])  # 3 prefix (one pad), 2 latent
    m = np.asarray(prefix_lm_mask(valid, 3))[0].astype(int)
    expect = np.array(
        [
            [1, 1, 0, 0, 0],  # prefix: valid prefix keys only
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 0, 1, 0],  # latent 0: prefix + itself
            [1, 1, 0, 1, 1],  # latent 1: prefix + latents <= 1
        ]
    )
    np.testing.assert_array_equal(m, expect)


def test_latent_positions_are_causal_and_padding_is_invisible():
    model, params, (img, txt, mask, codes) = _init()
    # Random heads, so logits depend on the inputs (the head starts at zero).
    params = jax.tree.map(lambda x: x, params)
    params["params"]["latent_head"] = nn.meta.replace_boxed(
        params["params"]["latent_head"],
        jax.random.normal(jax.random.key(9), params["params"]["latent_head"].value.shape),
    )
    base = np.asarray(model.apply(params, img, txt, mask, codes)["latent_logits"])
    for k in range(4):
        other = codes.at[:, k].set((codes[:, k] + 1) % 8)
        out = np.asarray(model.apply(params, img, txt, mask, other)["latent_logits"])
        np.testing.assert_allclose(out[:, : k + 1], base[:, : k + 1], rtol=1e-5, atol=1e-6)
        if k < 3:
            assert np.abs(out[:, k + 1 :] - base[:, k + 1 :]).max() > 1e-4
    # Token ids under the padding mask change nothing.
    txt2 = jnp.where(mask, txt, 7)
    out = np.asarray(model.apply(params, img, txt2, mask, codes)["latent_logits"])
    np.testing.assert_allclose(out, base, rtol=1e-5, atol=1e-6)
    # The image matters.
    out = np.asarray(model.apply(params, img[::-1], txt, mask, codes)["latent_logits"])
    assert np.abs(out - base[::-1]).max() > 1e-4 or np.abs(out - base).max() > 1e-4


def test_scanned_rematerialized_model_equals_the_unrolled_one():
    model, params, inputs = _init()
    scanned, s_params, _ = _init(scan_layers=True, remat=True)
    p = nn.meta.unbox(params)["params"]
    stack = lambda blocks: jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)  # noqa: E731
    q = dict(p)
    q["layers"] = stack([p["layers"][f"layer_{i}"] for i in range(2)])
    q["vision"] = dict(p["vision"], blocks=stack([p["vision"]["blocks"]["layer_0"]]))
    s_shapes = jax.tree.map(jnp.shape, nn.meta.unbox(s_params)["params"])
    assert jax.tree.map(jnp.shape, q) == s_shapes
    a = model.apply({"params": p}, *inputs)["latent_logits"]
    b = scanned.apply({"params": q}, *inputs)["latent_logits"]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # Gradients agree too (remat recomputes, it does not change the math).
    loss = lambda m, pp: m.apply({"params": pp}, *inputs)["latent_logits"].sum()  # noqa: E731
    ga = jax.grad(lambda pp: loss(model, pp))(p)["latent_head"]
    gb = jax.grad(lambda pp: loss(scanned, pp))(q)["latent_head"]
    np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kv", [1, 4])
def test_greedy_decoding_is_consistent_with_teacher_forcing(kv):
    model, params, (img, txt, mask, _) = _init(num_kv_heads=kv)
    params["params"]["latent_head"] = nn.meta.replace_boxed(
        params["params"]["latent_head"],
        jax.random.normal(jax.random.key(5), params["params"]["latent_head"].value.shape),
    )
    codes = model.apply(params, img, txt, mask, method=VLM.decode)
    assert codes.shape == (3, 4) and codes.dtype == jnp.int32
    logits = model.apply(params, img, txt, mask, codes)["latent_logits"]
    np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1)), np.asarray(codes))
    sampled = model.apply(params, img, txt, mask, jax.random.key(0), 1.0, method=VLM.decode)
    assert sampled.shape == (3, 4) and int(sampled.max()) < 8


def test_tokenizer_prompt(tokenizer_path):
    tok = Tokenizer(tokenizer_path)
    assert (
        prompt_text("Open the drawer.") == "What action should the robot take to open the drawer?"
    )
    ids, mask = tok.prompt("open the drawer", 32)
    n = int(mask.sum())
    assert ids.shape == (32,) and ids[0] == tok.bos_id and (ids[n:] == tok.pad_id).all()
    assert tok.decode(ids[:n]) == "What action should the robot take to open the drawer?"
    short, smask = tok.prompt("open the drawer", 4)
    np.testing.assert_array_equal(short, ids[:4])
    assert smask.all()
    with pytest.raises(FileNotFoundError, match="train_tokenizer"):
        Tokenizer("/nonexistent.model")


def test_latent_metrics_and_baselines():
    true = np.array([[0, 1, 2, 3]] * 6 + [[1, 1, 1, 1]] * 4)
    train = np.array([[0, 1, 2, 3]] * 3 + [[1, 1, 1, 1]])
    collapsed = np.tile([[0, 1, 2, 3]], (10, 1))
    m = latent_metrics(collapsed, true, train)
    assert m["action_accuracy"] == pytest.approx(0.6)
    assert m["majority_action_accuracy"] == pytest.approx(0.6)
    assert m["predicted_distinct_actions"] == 1 and m["predicted_top_action_share"] == 1.0
    assert m["accuracy_position_1"] == 1.0 and m["majority_accuracy_position_0"] == pytest.approx(
        0.6
    )
    perfect = latent_metrics(true, true, train)
    assert perfect["action_accuracy"] == 1.0 and perfect["predicted_distinct_actions"] == 2
    assert perfect["predicted_action_entropy_bits"] == pytest.approx(0.971, abs=1e-3)


def tiny_config(labelled_dir, tokenizer_path, **train):
    c = lp_experiment.get_config("tiny")
    c.data.dir = labelled_dir
    c.data.spec = os.path.join(labelled_dir, "lapa_spec.json")
    c.data.tokenizer = tokenizer_path
    c.train.update(train)
    return c


def test_train_evaluate_and_resume_exactly(labelled_dir, tokenizer_path, tmp_path):
    from tests.test_trainer import leaves_equal, read_jsonl

    full = str(tmp_path / "full")
    ref = jax.device_get(Trainer(tiny_config(labelled_dir, tokenizer_path), full).run())
    rows = read_jsonl(os.path.join(full, "metrics.jsonl"))
    logged = [r for r in rows if "tokens_per_s" in r]
    assert logged and all(r["model_gflops_per_s"] > 0 for r in logged)
    seq = 16 + 16 + 4  # 4x4 patches, 16 prompt tokens, 4 latent tokens
    np.testing.assert_allclose(logged[-1]["tokens_per_s"], logged[-1]["samples_per_s"] * seq)
    ev = [r for r in rows if "eval_latent_accuracy" in r][-1]
    for k in (
        "eval_majority_latent_accuracy",
        "eval_action_accuracy",
        "eval_predicted_distinct_actions",
    ):
        assert k in ev
    assert 0.0 <= ev["eval_latent_accuracy"] <= 1.0 and ev["eval_held_out_steps"] == 16
    part = str(tmp_path / "part")
    Trainer(tiny_config(labelled_dir, tokenizer_path, steps=3), part).run()
    resumed = jax.device_get(Trainer(tiny_config(labelled_dir, tokenizer_path), part).run())
    assert int(resumed.step) == 6
    assert leaves_equal(resumed.params, ref.params)
    assert leaves_equal(resumed.opt_state, ref.opt_state)


def test_loss_falls_and_frozen_vision_stays_put(labelled_dir, tokenizer_path):
    c = tiny_config(labelled_dir, tokenizer_path)
    c.optimizer.frozen = ["vision"]
    c.model.freeze_vision = True
    trainer = Trainer(c, "/nonexistent")
    state = trainer.init_state()
    it = iter(trainer.task.make_data("train", 8, seed=0))
    batch = next(it)
    v0 = jax.device_get(state.params["vision"])
    l0 = jax.device_get(state.params["layers"])
    losses = []
    for _ in range(15):  # the same batch: the loss must fall
        state, m = trainer.train_step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.3, losses
    from tests.test_trainer import leaves_equal

    assert leaves_equal(jax.device_get(state.params["vision"]), v0)
    assert not leaves_equal(jax.device_get(state.params["layers"]), l0)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_training_matches_single_device(labelled_dir, tokenizer_path):
    cfgs = []
    for mesh in ({"data": 1, "fsdp": 1, "tensor": 1}, {"data": 2, "fsdp": 2, "tensor": 2}):
        c = tiny_config(labelled_dir, tokenizer_path)
        c.mesh.update(mesh)
        cfgs.append(c)
    task = LatentPretrainTask(cfgs[0])
    it = iter(task.make_data("train", 8, seed=0))
    batches = [next(it) for _ in range(3)]
    results = []
    for c in cfgs:
        trainer = Trainer(c, "/nonexistent")
        state = trainer.init_state()
        losses = []
        for b in batches:
            state, m = trainer.train_step(state, b)
            losses.append(float(m["loss"]))
        results.append((losses, jax.device_get(state.params)))
        if c.mesh.tensor == 2:
            gate = state.params["layers"]["layer_0"]["gate"]["kernel"]
            assert gate.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_bad_data_and_config(labelled_dir, tokenizer_path, metaworld_dir):
    c = tiny_config(metaworld_dir, tokenizer_path)
    c.data.spec = "metaworld"
    with pytest.raises(ValueError, match="no latent_action_key"):
        LatentPretrainTask(c).make_data("train", 8, 0)
    c = tiny_config(labelled_dir, tokenizer_path)
    c.model.vocab_size = 10
    with pytest.raises(ValueError, match="< the tokenizer's"):
        LatentPretrainTask(c)
    c = tiny_config(labelled_dir, tokenizer_path)
    c.model.num_kv_heads = 3
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        LatentPretrainTask(c)


def test_latent_layout_comes_from_the_labels(labelled_dir, tokenizer_path, tmp_path):
    """num_latent_tokens = 0 (the metaworld config's): stage 2 takes the layout that the
    labelling quantizer recorded, and refuses labels that do not fit it or a dataset
    without the record."""
    from lapa_jax.data.sources import DataError

    c = tiny_config(labelled_dir, tokenizer_path)
    c.model.num_latent_tokens = c.model.latent_codes = 0
    task = LatentPretrainTask(c)
    with open(os.path.join(labelled_dir, "lapa_labels.json")) as f:
        q = json.load(f)["quantizer"]
    layout = (task.model_cfg.num_latent_tokens, task.model_cfg.latent_codes)
    assert layout == (q["num_latent_tokens"], q["num_codes"]) == (4, 8)
    assert (c.model.num_latent_tokens, c.model.latent_codes) == (4, 8)  # for config.json
    assert task.step_source("train")[0]["latent"].shape == (4,)

    copy = str(tmp_path / "ds")
    shutil.copytree(labelled_dir, copy)
    record = os.path.join(copy, "lapa_labels.json")
    with open(record) as f:
        labels = json.load(f)
    labels["quantizer"].update(num_latent_tokens=16, num_codes=12)
    with open(record, "w") as f:
        json.dump(labels, f)
    c = tiny_config(copy, tokenizer_path)
    c.model.num_latent_tokens = c.model.latent_codes = 0
    task = LatentPretrainTask(c)
    assert (task.model_cfg.num_latent_tokens, task.model_cfg.latent_codes) == (16, 12)
    with pytest.raises(DataError, match="does not fit 16 tokens of 12 codes"):
        task.step_source("train")[0]
    os.remove(record)
    c.model.num_latent_tokens = c.model.latent_codes = 0
    with pytest.raises(DataError, match=r"lapa_labels\.json, which does not exist"):
        LatentPretrainTask(c)
    # Set explicitly, the layout needs no record.
    c.model.num_latent_tokens, c.model.latent_codes = 4, 8
    assert LatentPretrainTask(c).model_cfg.num_latent_tokens == 4


def test_latent_tokens_trains_on_the_first_tokens_only(labelled_dir, tokenizer_path):
    """data.latent_tokens = N: stage 2 predicts the first N tokens of each label (a
    residual quantizer's coarse stages), its layout and the evaluation's labels follow."""
    from lapa_jax.data.sources import DataError
    from lapa_jax.tasks.latent_pretrain import _all_labels

    c = tiny_config(labelled_dir, tokenizer_path)
    c.model.num_latent_tokens = c.model.latent_codes = 0
    full = LatentPretrainTask(c).step_source("train")
    c.data.latent_tokens = 2
    c.model.num_latent_tokens = c.model.latent_codes = 0  # the first task recorded 4, 8
    task = LatentPretrainTask(c)
    assert (task.model_cfg.num_latent_tokens, task.model_cfg.latent_codes) == (2, 8)
    assert c.model.num_latent_tokens == 2  # recorded for config.json
    src = task.step_source("train")
    for i in (0, len(src) - 1):
        np.testing.assert_array_equal(src[i]["latent"], full[i]["latent"][:2])
    np.testing.assert_array_equal(_all_labels(src), _all_labels(full)[:, :2])
    assert task.dummy_batch(3)["latent"].shape == (3, 2)

    c.data.latent_tokens = 5  # the labels have 4
    c.model.num_latent_tokens = c.model.latent_codes = 0
    with pytest.raises(DataError, match="latent_tokens 5 > the 4 tokens"):
        LatentPretrainTask(c)
    c.model.num_latent_tokens, c.model.latent_codes = 5, 8  # layout given: caught on read
    with pytest.raises(DataError, match=r"have 4 tokens, data\.latent_tokens asks for the first 5"):
        LatentPretrainTask(c).step_source("train")[0]
    c.data.latent_tokens, c.model.num_latent_tokens = 2, 3
    with pytest.raises(ValueError, match=r"num_latent_tokens 3 != data\.latent_tokens 2"):
        LatentPretrainTask(c)
    c.data.latent_tokens = -1
    with pytest.raises(ValueError, match="latent_tokens must be >= 0"):
        LatentPretrainTask(c)
