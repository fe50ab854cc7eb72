"""Initialising the stage-2 VLM from a PaliGemma-layout .npz (written here at tiny size)
and from one of our own runs: every tensor lands where the mapping says, and
mismatches fail loudly, listing what does not fit."""

from __future__ import annotations

import numpy as np
import pytest
from flax import traverse_util

from lapa_jax.pretrained import PretrainedMismatchError
from lapa_jax.trainer import Trainer
from tests.test_latent_pretrain import tiny_config


def _paligemma(cfg, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    lv, w, h, f = cfg.vit_depth, cfg.vit_width, cfg.vit_heads, cfg.vit_mlp
    hd, p, n = w // h, cfg.patch_size, cfg.num_patches
    ld, d, nh, k, hd2, m = (
        cfg.depth,
        cfg.width,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.mlp,
    )
    blk = "img/Transformer/encoderblock/"
    mha = blk + "MultiHeadDotProductAttention_0/"
    arrays = {
        "img/embedding/kernel": r(p, p, 3, w),
        "img/embedding/bias": r(w),
        "img/pos_embedding": r(1, n, w),
        "img/Transformer/encoder_norm/scale": r(w),
        "img/Transformer/encoder_norm/bias": r(w),
        "img/head/kernel": r(w, d),
        "img/head/bias": r(d),
        blk + "LayerNorm_0/scale": r(lv, w),
        blk + "LayerNorm_0/bias": r(lv, w),
        blk + "LayerNorm_1/scale": r(lv, w),
        blk + "LayerNorm_1/bias": r(lv, w),
        blk + "MlpBlock_0/Dense_0/kernel": r(lv, w, f),
        blk + "MlpBlock_0/Dense_0/bias": r(lv, f),
        blk + "MlpBlock_0/Dense_1/kernel": r(lv, f, w),
        blk + "MlpBlock_0/Dense_1/bias": r(lv, w),
        **{mha + f"{x}/kernel": r(lv, w, h, hd) for x in ("query", "key", "value")},
        **{mha + f"{x}/bias": r(lv, h, hd) for x in ("query", "key", "value")},
        mha + "out/kernel": r(lv, h, hd, w),
        mha + "out/bias": r(lv, w),
        "llm/embedder/input_embedding": r(vocab, d),
        "llm/final_norm/scale": r(d),
        "llm/layers/pre_attention_norm/scale": r(ld, d),
        "llm/layers/pre_ffw_norm/scale": r(ld, d),
        "llm/layers/attn/q_einsum/w": r(ld, nh, d, hd2),
        "llm/layers/attn/kv_einsum/w": r(ld, 2, k, d, hd2),
        "llm/layers/attn/attn_vec_einsum/w": r(ld, nh, hd2, d),
        "llm/layers/mlp/gating_einsum": r(ld, 2, d, m),
        "llm/layers/mlp/linear": r(ld, m, d),
    }
    return {"params/" + key: v for key, v in arrays.items()}


def _write(path, arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("scan", [False, True])
def test_paligemma_npz_lands_every_tensor(labelled_dir, tokenizer_path, tmp_path, scan):
    c = tiny_config(labelled_dir, tokenizer_path)
    c.model.scan_layers = scan
    trainer = Trainer(c, "/nonexistent")
    cfg = trainer.task.model_cfg
    src = _paligemma(cfg, cfg.vocab_size)
    c.init.vision_from = c.init.language_from = _write(tmp_path / "pg.npz", src)
    trainer = Trainer(c, "/nonexistent")
    flat = traverse_util.flatten_dict(trainer.init_state().params, sep="/")
    params = {k: np.asarray(v) for k, v in flat.items()}
    g = lambda key: src["params/" + key]  # noqa: E731
    layer = (
        (lambda i, rest: (f"layers/{rest}", i))
        if scan
        else (lambda i, rest: (f"layers/layer_{i}/{rest}", None))
    )

    def ours(i, rest):
        key, idx = layer(i, rest)
        return params[key] if idx is None else params[key][idx]

    np.testing.assert_array_equal(
        params["vision/patch_embed/kernel"], g("img/embedding/kernel").reshape(-1, cfg.vit_width)
    )
    np.testing.assert_array_equal(params["vision/pos_embedding"], g("img/pos_embedding")[0])
    np.testing.assert_array_equal(params["embedder"], g("llm/embedder/input_embedding"))
    for i in range(cfg.depth):
        np.testing.assert_array_equal(
            ours(i, "attn/query/kernel"), g("llm/layers/attn/q_einsum/w")[i].transpose(1, 0, 2)
        )
        np.testing.assert_array_equal(
            ours(i, "attn/key/kernel"), g("llm/layers/attn/kv_einsum/w")[i, 0].transpose(1, 0, 2)
        )
        np.testing.assert_array_equal(
            ours(i, "attn/value/kernel"), g("llm/layers/attn/kv_einsum/w")[i, 1].transpose(1, 0, 2)
        )
        np.testing.assert_array_equal(
            ours(i, "attn/out/kernel"), g("llm/layers/attn/attn_vec_einsum/w")[i]
        )
        np.testing.assert_array_equal(
            ours(i, "gate/kernel"), g("llm/layers/mlp/gating_einsum")[i, 0]
        )
        np.testing.assert_array_equal(ours(i, "up/kernel"), g("llm/layers/mlp/gating_einsum")[i, 1])
        np.testing.assert_array_equal(ours(i, "down/kernel"), g("llm/layers/mlp/linear")[i])
        np.testing.assert_array_equal(
            ours(i, "pre_mlp_norm/scale"), g("llm/layers/pre_ffw_norm/scale")[i]
        )
    vb = "vision/blocks/" if scan else "vision/blocks/layer_0/"
    pick = (lambda a: a[0]) if scan else (lambda a: a)
    blk = "img/Transformer/encoderblock/"
    np.testing.assert_array_equal(
        pick(params[vb + "mlp_in/kernel"]), g(blk + "MlpBlock_0/Dense_0/kernel")[0]
    )
    np.testing.assert_array_equal(
        pick(params[vb + "attn/out/bias"]), g(blk + "MultiHeadDotProductAttention_0/out/bias")[0]
    )
    # Every parameter but the latent-action ones came from the file.
    report = trainer.pretrained_report
    assert report["initialised"] == ["latent_begin", "latent_embed", "latent_head"]
    assert report["loaded"] == len(params) - 3


def test_mismatches_are_listed_and_nothing_is_skipped(labelled_dir, tokenizer_path, tmp_path):
    c = tiny_config(labelled_dir, tokenizer_path)
    cfg = Trainer(c, "/nonexistent").task.model_cfg
    src = _paligemma(cfg, cfg.vocab_size + 5)  # another vocabulary
    src["params/llm/layers/mlp/linear"] = src["params/llm/layers/mlp/linear"][:, :-1]
    c.init.language_from = _write(tmp_path / "bad.npz", src)
    with pytest.raises(PretrainedMismatchError) as e:
        Trainer(c, "/nonexistent").init_state()
    msg = str(e.value)
    assert "3 arrays" in msg and "embedder" in msg and "layers/layer_0/down/kernel" in msg
    del src["params/llm/final_norm/scale"]
    c.init.language_from = _write(tmp_path / "missing.npz", src)
    with pytest.raises(PretrainedMismatchError, match=r"lacks 1 arrays.*final_norm"):
        Trainer(c, "/nonexistent").init_state()
    c.init.language_from = str(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):
        Trainer(c, "/nonexistent").init_state()


def test_vision_from_one_of_our_runs(labelled_dir, tokenizer_path, tmp_path):
    run = str(tmp_path / "run")
    done = Trainer(tiny_config(labelled_dir, tokenizer_path, steps=3), run).run()
    c = tiny_config(labelled_dir, tokenizer_path)
    c.init.vision_from = run
    c.train.seed = 1  # another initialisation, so a copy is visible
    state = Trainer(c, "/nonexistent").init_state()
    theirs = traverse_util.flatten_dict(done.params, sep="/")
    ours = traverse_util.flatten_dict(state.params, sep="/")
    for k, v in ours.items():
        same = np.array_equal(np.asarray(v), np.asarray(theirs[k]))
        assert same == k.startswith("vision/"), k
