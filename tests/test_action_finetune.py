"""Stage 3, binned head: the latent head is replaced, bins are fitted on the finetuning
data and saved with the run, LAPA initialisation loads the latent run's vision encoder
and language model, and the held-out report has its baselines."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from experiments import action_finetune as ft_experiment
from lapa_jax.action_bins import ActionBins
from lapa_jax.data.sources import EpisodeSource
from lapa_jax.trainer import Trainer
from tests.test_latent_pretrain import tiny_config as tiny_latent_config
from tests.test_trainer import read_jsonl


def tiny_config(metaworld_dir, tokenizer_path, **train):
    c = ft_experiment.get_config("tiny")
    c.data.dir = metaworld_dir
    c.data.tokenizer = tokenizer_path
    c.num_bins = 16
    c.train.update(train)
    return c


@pytest.fixture(scope="module")
def latent_run(labelled_dir, tokenizer_path, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("latent_run"))
    state = Trainer(tiny_latent_config(labelled_dir, tokenizer_path), workdir).run()
    return workdir, jax.device_get(state)


@pytest.fixture(scope="module")
def scratch_run(metaworld_dir, tokenizer_path, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("scratch"))
    trainer = Trainer(tiny_config(metaworld_dir, tokenizer_path), workdir)
    return workdir, trainer, trainer.run()


def test_scratch_finetune_fits_saves_and_reports(metaworld_dir, scratch_run):
    workdir, trainer, state = scratch_run
    cfg = trainer.task.model_cfg
    assert cfg.num_latent_tokens == 4  # Meta-World: xyz + gripper
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    bins = ActionBins.from_json(json.loads(saved["action_bins"]))
    actions = np.concatenate(
        [EpisodeSource(metaworld_dir, "metaworld", "train").actions(e) for e in range(4)]
    )
    np.testing.assert_array_equal(bins.encode(actions), trainer.task.bins.encode(actions))
    assert bins.gripper_index == 3 and cfg.latent_codes == bins.max_bins <= 16
    head = state.params["latent_head"]
    assert head.shape == (4, cfg.width, bins.max_bins)
    ev = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "eval_action_mse" in r][
        -1
    ]
    for key in (
        "eval_token_accuracy_dim_0",
        "eval_majority_token_accuracy_dim_3",
        "eval_mean_action_mse",
    ):
        assert key in ev
    assert ev["eval_bin_quantization_mse"] < ev["eval_mean_action_mse"]


def test_lapa_start_loads_the_latent_run_and_replaces_its_head(
    metaworld_dir, tokenizer_path, latent_run
):
    latent_dir, latent_state = latent_run
    c = tiny_config(metaworld_dir, tokenizer_path)
    c.init_from = latent_dir
    c.train.seed = 3  # another initialisation, so copies are visible
    trainer = Trainer(c, "/nonexistent")
    state = trainer.init_state()
    ours = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
    theirs = traverse_util.flatten_dict(latent_state.params, sep="/")
    for key, value in ours.items():
        if key.startswith("latent_"):
            continue
        np.testing.assert_array_equal(value, theirs[key], err_msg=key)
    assert ours["latent_head"].shape != theirs["latent_head"].shape
    assert trainer.pretrained_report["initialised"] == [
        "latent_begin",
        "latent_embed",
        "latent_head",
    ]


@pytest.fixture(scope="module")
def chunked_run(metaworld_dir, tokenizer_path, latent_run, tmp_path_factory):
    """The chunked head (K = 3), started from the latent run (LAPA)."""
    workdir = str(tmp_path_factory.mktemp("chunked"))
    c = tiny_config(metaworld_dir, tokenizer_path)
    c.head, c.chunk_size, c.init_from = "chunked", 3, latent_run[0]
    c.lock()  # as config_flags hands it over
    trainer = Trainer(c, workdir)
    return workdir, trainer, trainer.run()


def test_chunked_head_targets_statistics_and_loading(metaworld_dir, latent_run, chunked_run):
    workdir, trainer, state = chunked_run
    head = trainer.task.head
    source = EpisodeSource(metaworld_dir, "metaworld", "train")
    train = np.concatenate([source.actions(e) for e in range(len(source))])
    np.testing.assert_allclose(head.mean, train.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.std, np.maximum(train.std(0), 1e-3), rtol=1e-5)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.loads(json.load(f)["action_stats"])["chunk_size"] == 3
    # Targets: actions t..t+2 normalized; past the episode's end the last action, masked.
    steps = trainer.task.step_source("train")
    acts = source.actions(0)
    n = len(acts)
    for t, valid in ((0, [1, 1, 1]), (n - 2, [1, 1, 0]), (n - 1, [1, 0, 0])):
        item = steps[t]  # episode 0's steps come first
        assert int(item["episode"]) == 0 and int(item["t"]) == t
        want = acts[np.minimum(np.arange(t, t + 3), n - 1)]
        np.testing.assert_allclose(head.to_actions(item["actions"]), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(item["action_mask"], valid)
        np.testing.assert_array_equal(item["action"], acts[t])
    # The latent run's backbone is loaded; its latent head is not there at all.
    params = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
    assert params["action_head"].shape == (3, trainer.task.model_cfg.width, 4)
    assert not any(k.startswith("latent_") for k in params)
    report = trainer.pretrained_report
    assert report["initialised"] == ["action_bias", "action_head", "action_queries"]
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    ev = [r for r in rows if "eval_chunk_l1" in r][-1]
    assert np.isfinite(ev["eval_chunk_l1"]) and ev["eval_mean_chunk_l1"] > 0
    assert all(np.isfinite(r["l1_loss"]) for r in rows if "l1_loss" in r)


def test_chunked_policy_predicts_chunks(metaworld_dir, chunked_run):
    from lapa_jax.policy import Policy

    policy = Policy.load(chunked_run[0], batch_size=2)
    assert policy.chunk_size == 3 and policy.describe()["head"] == "chunked"
    source = EpisodeSource(metaworld_dir, "metaworld", "val")
    frames = [source.image(0, t) for t in range(3)]
    text = [source.instruction(0)] * 3
    chunks = policy.predict_batch(frames, text)
    assert chunks.shape == (3, 3, 4) and chunks.dtype == np.float32
    np.testing.assert_allclose(policy.act_batch(frames, text), chunks[:, 0], rtol=1e-6)
    np.testing.assert_allclose(policy.predict_batch(frames[1:2], text[:1])[0], chunks[1], rtol=1e-5)
    with pytest.raises(ValueError, match="deterministic"):
        policy.act(frames[0], text[0], temperature=1.0)
    # Served, the whole chunk comes back beside its first action.
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from lapa_jax.serve import make_app

    buf = io.BytesIO()
    Image.fromarray(frames[1]).save(buf, format="PNG")
    body = {"image": base64.b64encode(buf.getvalue()).decode(), "instruction": text[1]}
    got = TestClient(make_app(policy)).post("/act", json=body).json()
    np.testing.assert_allclose(got["chunk"], chunks[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["action"], chunks[1][0], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def lora_run(metaworld_dir, tokenizer_path, latent_run, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lora"))
    c = tiny_config(metaworld_dir, tokenizer_path, steps=6, eval_every=0, checkpoint_every=6)
    c.init_from, c.lora.rank = latent_run[0], 2
    c.optimizer.lr = 1e-2  # a few steps must move the adapters visibly
    trainer = Trainer(c, workdir)
    return workdir, trainer, trainer.run()


def test_lora_trains_adapters_and_head_only_and_saves_a_small_adapter(
    metaworld_dir, latent_run, lora_run
):
    from lapa_jax.policy import Policy

    workdir, _trainer, state = lora_run
    ours = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
    base = traverse_util.flatten_dict(latent_run[1].params, sep="/")
    adapters = [k for k in ours if k.rsplit("/", 1)[-1] in ("lora_a", "lora_b")]
    # Every projection of every language block, none in the vision encoder.
    names = {"query", "key", "value", "out", "gate", "up", "down"}
    assert {k.split("/")[-2] for k in adapters} == names
    assert all(k.startswith("layers/") for k in adapters)
    assert ours["layers/layer_0/attn/query/lora_a"].shape[-1] == 2
    assert any(np.abs(ours[k]).max() > 0 for k in adapters if k.endswith("lora_b"))
    for key, value in ours.items():
        if key in adapters or key.startswith("latent_"):
            continue
        np.testing.assert_array_equal(value, base[key], err_msg=f"{key} moved: base not frozen")
    # No optimizer moments for the frozen base.
    trained = sum(v.size for k, v in ours.items() if k in adapters or k.startswith("latent_"))
    opt = sum(np.size(x) for x in jax.tree.leaves(state.opt_state))
    assert opt <= 2 * trained + 16 < sum(v.size for v in ours.values())
    with open(os.path.join(workdir, "adapter", "adapter.json")) as f:
        meta = json.load(f)
    assert meta["parameters"] == trained and meta["parameters"] < meta["model_parameters"] / 4
    assert meta["base"] == os.path.abspath(latent_run[0]) and meta["step"] == 6
    # The adapter on its rebuilt base is the finetuned model.
    full = Policy.load(workdir, batch_size=2)
    small = Policy.load(workdir, batch_size=2, from_adapter=True)
    for k, v in traverse_util.flatten_dict(full.params, sep="/").items():
        np.testing.assert_array_equal(traverse_util.flatten_dict(small.params, sep="/")[k], v)
    source = EpisodeSource(metaworld_dir, "metaworld", "val")
    frames, text = [source.image(0, t) for t in range(2)], [source.instruction(0)] * 2
    np.testing.assert_array_equal(full.act_batch(frames, text), small.act_batch(frames, text))


def test_action_pretrained_start_loads_a_finetuned_run(metaworld_dir, tokenizer_path, scratch_run):
    """The upper-bound arm: init_from a run of this task (trained on true actions)."""
    source_dir, _, source_state = scratch_run
    c = tiny_config(metaworld_dir, tokenizer_path)
    c.init_from, c.train.seed = source_dir, 4
    trainer = Trainer(c, "/nonexistent")
    ours = traverse_util.flatten_dict(jax.device_get(trainer.init_state().params), sep="/")
    theirs = traverse_util.flatten_dict(jax.device_get(source_state.params), sep="/")
    for key, value in ours.items():
        if not key.startswith("latent_"):  # the backbone; the head starts fresh
            np.testing.assert_array_equal(value, theirs[key], err_msg=key)
    assert not np.array_equal(ours["latent_embed"], theirs["latent_embed"])


def test_bad_finetune_config(metaworld_dir, labelled_dir, tokenizer_path, tmp_path):
    c = tiny_config(metaworld_dir, tokenizer_path)
    c.init_from = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="not a training run folder"):
        Trainer(c, "/nonexistent")
    c = tiny_config(metaworld_dir, tokenizer_path)
    c.head = "diffusion"
    with pytest.raises(ValueError, match="head must be one of"):
        Trainer(c, "/nonexistent")
    c = tiny_config(metaworld_dir, tokenizer_path)
    c.head, c.chunk_size = "chunked", 0
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        Trainer(c, "/nonexistent")
    c = tiny_config(metaworld_dir, tokenizer_path)
    c.lora.rank = -1
    with pytest.raises(ValueError, match=r"lora\.rank must be >= 0"):
        Trainer(c, "/nonexistent")
    c = tiny_config(metaworld_dir, tokenizer_path)
    c.optimizer.trainable = ["no_such_parameter"]
    with pytest.raises(ValueError, match="leave no parameter to train"):
        Trainer(c, "/nonexistent").init_state()


def test_policy_acts_on_raw_images(metaworld_dir, scratch_run, full_run):
    from lapa_jax.policy import Policy

    workdir = scratch_run[0]
    policy = Policy.load(workdir, batch_size=4)
    bins = policy.head.bins
    src = EpisodeSource(metaworld_dir, "metaworld", "val")
    frames = [src.image(0, t) for t in range(3)]  # 64x64 camera frames; the model sees 16x16
    wide = np.zeros((40, 60, 3), np.uint8)
    a = policy.act(frames[0], "reach the goal")
    assert a.shape == (4,) and a.dtype == np.float32
    # Every output is a bin centre (or a gripper class value): it re-encodes to itself.
    np.testing.assert_allclose(bins.decode(bins.encode(a[None]))[0], a, rtol=1e-6)
    batch = policy.act_batch([*frames, wide, frames[1]], ["reach the goal"] * 5)
    assert batch.shape == (5, 4)
    np.testing.assert_array_equal(batch[0], a)  # padding and batching change nothing
    np.testing.assert_array_equal(batch[4], policy.act(frames[1], "reach the goal"))
    sampled = policy.act(frames[0], "reach the goal", temperature=1.0)
    np.testing.assert_allclose(bins.decode(bins.encode(sampled[None]))[0], sampled, rtol=1e-6)
    with pytest.raises(ValueError, match="RGB image"):
        policy.act(np.zeros((8, 8, 5), np.uint8), "reach the goal")
    with pytest.raises(ValueError, match="non-empty string"):
        policy.act(frames[0], "  ")
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        policy.act_batch(frames[:2], ["reach"])
    laq_dir, _ = full_run
    with pytest.raises(ValueError, match="not a finetuned policy"):
        Policy.load(laq_dir)


def test_http_serving_answers_and_rejects_bad_requests(scratch_run):
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from lapa_jax.policy import Policy
    from lapa_jax.serve import make_app

    policy = Policy.load(scratch_run[0], batch_size=1)
    client = TestClient(make_app(policy))
    assert client.get("/health").json()["policy"]["action_dim"] == 4
    img = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    good = {"image": base64.b64encode(buf.getvalue()).decode(), "instruction": "reach the goal"}
    r = client.post("/act", json=good)
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["action"], policy.act(img, "reach the goal"), rtol=1e-6)
    bad = {
        "not json": (dict(content=b"{nope", headers={"content-type": "application/json"}), 400),
        "missing": (dict(json={"image": good["image"]}), 422),
        "wrong type": (dict(json={**good, "instruction": 5}), 422),
        "base64": (dict(json={**good, "image": "%%%"}), 400),
        "not an image": (dict(json={**good, "image": base64.b64encode(b"hello").decode()}), 400),
        "list body": (dict(json=[1, 2]), 400),
    }
    for name, (kw, status) in bad.items():
        r = client.post("/act", **kw)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert "error" in r.json(), name
    assert client.post("/act", json=good).status_code == 200  # still serving


def test_closed_loop_evaluation_of_a_finetuned_run(scratch_run, tmp_path):
    from lapa_jax import evaluate_policy
    from tests.conftest import TINY_TASKS

    workdir = scratch_run[0]
    args = ["--workdir", workdir, "--episodes", "2", "--max_frames", "3", "--workers", "1"]
    out = evaluate_policy.main([*args, "--out", str(tmp_path / "a")])
    with open(out["results_json"]) as f:
        saved = json.load(f)
    assert list(saved["per_task"]) == list(TINY_TASKS)  # the dataset's tasks by default
    assert saved["rollout_config"]["camera"] == "corner" and saved["episodes"] == 4
    assert all(1 <= e["length"] <= 3 for e in saved["episodes_detail"])
    assert len(saved["videos"]) == len(TINY_TASKS) and all(
        os.path.isfile(v) for v in saved["videos"]
    )
    assert os.path.getsize(saved["summary_png"]) > 0
    again = evaluate_policy.main([*args, "--out", str(tmp_path / "b"), "--videos_per_task", "0"])
    assert again["episodes_detail"] == saved["episodes_detail"] and again["videos"] == []
