"""data_pipelines.label_latent_actions: labels equal the quantizer's codes, runs are
deterministic, a killed run resumes to the same dataset, other layouts work, and bad
input fails with a clear error and writes nothing.

The labeller imports TensorFlow, so it runs in subprocesses; the checks read the output
back through EpisodeSource (no TensorFlow) with the spec the labeller wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lapa_jax.data.sources import EpisodeSource
from tests import rlds_fixtures

MODULE = "data_pipelines.label_latent_actions"


def _label(src: str, spec: str, laq: str, dst: str, *extra: str, fault: str = "") -> None:
    env = dict(os.environ, PYTHONPATH=rlds_fixtures.REPO, LAPA_LABEL_FAULT=fault)
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", MODULE, "--src", src, "--spec", spec]
    cmd += ["--laq_workdir", laq, "--dst", dst, "--batch_size", "16", *extra]
    proc = subprocess.run(
        cmd, cwd=rlds_fixtures.REPO, env=env, capture_output=True, text=True, timeout=600
    )
    if fault:
        assert proc.returncode == 137, proc.stderr[-3000:]
    elif proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_all(dst: str, split: str = "train") -> list[dict]:
    src = EpisodeSource(dst, os.path.join(dst, "lapa_spec.json"), split, use_index_cache=False)
    out = []
    for e in range(len(src)):
        steps = src.steps(e)
        out.append(
            {
                "codes": np.stack([src.latent_action(e, t, steps) for t in range(len(steps))]),
                "gaps": np.asarray([int(s["latent_action_gap"]) for s in steps]),
                "images": [bytes(s["observation"]["image"]) for s in steps],
                "actions": src.actions(e),
                "meta": src.episode_metadata(e),
            }
        )
    return out


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["codes"], y["codes"])
        np.testing.assert_array_equal(x["gaps"], y["gaps"])
        np.testing.assert_array_equal(x["actions"], y["actions"])
        assert x["images"] == y["images"] and x["meta"] == y["meta"]


@pytest.fixture(scope="module")
def labelled(labelled_dir):
    """Labelled by _label's arguments with --chunk_episodes 1 --save_vectors (conftest)."""
    return labelled_dir


def test_labels_are_the_quantizers_codes_and_everything_else_is_kept(
    metaworld_dir, full_run, labelled
):
    from lapa_jax.data.pipelines import FramePairSource, ImageConfig, square_image
    from lapa_jax.latent_encoder import LatentActionEncoder

    laq, _ = full_run
    enc = LatentActionEncoder(laq, batch_size=16)
    for split in ("train", "val"):
        src = EpisodeSource(metaworld_dir, "metaworld", split)
        pairs = FramePairSource(src, enc.frame_gap, ImageConfig(size=16, dtype="uint8"))
        out = _read_all(labelled, split)
        assert len(out) == len(src)
        i = 0
        for e, ep in enumerate(out):
            n = int(src.lengths[e])
            # Every original feature is kept, the images byte for byte.
            steps = src.steps(e)
            assert ep["images"] == [bytes(s["observation"]["image"]) for s in steps]
            np.testing.assert_array_equal(ep["actions"], src.actions(e))
            # clip_to_last: gap H, then shrinking to 0 at the last step.
            np.testing.assert_array_equal(
                ep["gaps"], np.minimum(np.arange(n) + enc.frame_gap, n - 1) - np.arange(n)
            )
            frames = np.stack([pairs[i + t]["frames"] for t in range(n - 1)])
            codes, _ = enc.encode(frames)
            np.testing.assert_array_equal(ep["codes"][: n - 1], codes)
            last = np.stack([square_image(src.image(e, n - 1), 16)] * 2)[None]
            np.testing.assert_array_equal(ep["codes"][n - 1], enc.encode(last)[0][0])
            i += n - 1
    labels = _json(os.path.join(labelled, "lapa_labels.json"))
    assert labels["frame_gap"] == enc.frame_gap and labels["quantizer"]["step"] == enc.step
    assert labels["quantizer"]["checkpoint"].endswith(f"checkpoints/{enc.step}")
    hist = np.asarray(labels["splits"]["train"]["histogram_per_position"])
    n_steps = sum(len(x["codes"]) for x in _read_all(labelled))
    assert hist.shape == (4, 8) and (hist.sum(1) == n_steps).all()
    stats = _json(os.path.join(labelled, "dataset_statistics_train.json"))
    assert stats["num_episodes"] == len(_read_all(labelled)) and stats["action"]["dim"] == 4


def test_a_second_run_gives_the_same_dataset(metaworld_dir, full_run, labelled, tmp_path):
    laq, _ = full_run
    dst = str(tmp_path / "again")
    _label(metaworld_dir, "metaworld", laq, dst, "--chunk_episodes", "1", "--save_vectors")
    for split in ("train", "val"):
        _assert_same(_read_all(labelled, split), _read_all(dst, split))
    shards = sorted(n for n in os.listdir(dst) if ".array_record-" in n)
    assert len(shards) == 6  # one per episode: 4 train + 2 val
    for name in shards:
        assert _bytes(os.path.join(dst, name)) == _bytes(os.path.join(labelled, name))


@pytest.mark.parametrize("fault", ["after_shard:1", "after_summary:2"])
def test_killed_run_resumes_to_the_same_dataset(metaworld_dir, full_run, labelled, tmp_path, fault):
    laq, _ = full_run
    dst = str(tmp_path / "resumed")
    args = (metaworld_dir, "metaworld", laq, dst, "--chunk_episodes", "1", "--save_vectors")
    _label(*args, fault=fault)
    # Half done: no dataset yet, and no unfinished shard under its final name.
    assert not os.path.exists(os.path.join(dst, "dataset_info.json"))
    with pytest.raises(Exception):  # noqa: B017 (TFDS raises its own error types)
        EpisodeSource(dst, "metaworld", "train")
    _label(*args)
    for split in ("train", "val"):
        _assert_same(_read_all(labelled, split), _read_all(dst, split))
    assert not [n for n in os.listdir(dst) if ".tmp-" in n]
    if fault.startswith("after_summary"):
        _label(*args)  # a run on a finished dataset changes nothing
        _assert_same(_read_all(labelled), _read_all(dst))


def test_two_processes_label_one_dataset(metaworld_dir, full_run, labelled, tmp_path):
    """Each process labels every other chunk; process 0 waits for all and writes the
    metadata. The result equals the single-process dataset."""
    laq, _ = full_run
    dst = str(tmp_path / "two")
    env = dict(os.environ, PYTHONPATH=rlds_fixtures.REPO)
    env.pop("XLA_FLAGS", None)
    procs = []
    for index in (1, 0):  # the helper starts first: it must wait for process 0's claim
        cmd = [sys.executable, "-m", MODULE, "--src", metaworld_dir, "--spec", "metaworld"]
        cmd += ["--laq_workdir", laq, "--dst", dst, "--batch_size", "16", "--chunk_episodes", "1"]
        cmd += ["--save_vectors", "--process_index", str(index), "--process_count", "2"]
        procs.append(
            subprocess.Popen(
                cmd, cwd=rlds_fixtures.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-3000:]
    for split in ("train", "val"):
        _assert_same(_read_all(labelled, split), _read_all(dst, split))


def test_non_square_dict_action_tfrecord_input(full_run, tmp_path):
    laq, _ = full_run
    src = rlds_fixtures.write_in_subprocess(
        str(tmp_path / "oxe"), "oxe_bridge", [4, 6, 3], height=20, width=32, file_format="tfrecord"
    )
    dst = str(tmp_path / "oxe_latent")
    _label(src, "oxe_bridge", laq, dst)
    out = _read_all_oxe(dst)
    assert [len(x) for x in out] == [4, 6, 3]
    for codes in out:
        assert codes.shape[1] == 4 and codes.dtype == np.int32
    spec = _json(os.path.join(dst, "lapa_spec.json"))
    assert spec["action_keys"] == [
        "action/world_vector",
        "action/rotation_delta",
        "action/open_gripper",
    ]
    info = _json(os.path.join(dst, "dataset_info.json"))
    assert info["fileFormat"] == "array_record"


def _read_all_oxe(dst: str) -> list[np.ndarray]:
    src = EpisodeSource(dst, os.path.join(dst, "lapa_spec.json"), "train", use_index_cache=False)
    out = []
    for e in range(len(src)):
        img = src.image(e, 0)
        assert img.shape == (20, 32, 3) and img[0, 0, 2] == 200  # the original, uncropped
        np.testing.assert_array_equal(src.action(e, 1)[:3], rlds_fixtures.action(e, 1)[:3])
        out.append(np.stack([src.latent_action(e, t) for t in range(int(src.lengths[e]))]))
    return out


BAD_INPUT_SCRIPT = r"""
import json, os, sys
from data_pipelines.label_latent_actions import Labeller
cases = json.loads(sys.argv[1])
out = {}
for name, kw in cases.items():
    try:
        Labeller(verbose=False, batch_size=16, **kw).run()
        out[name] = "no error"
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e}"
print("RESULT" + json.dumps(out))
"""


def test_bad_input_gives_clear_errors_and_writes_nothing(
    metaworld_dir, oxe_dir, full_run, labelled, tmp_path
):
    laq, _ = full_run
    other = tmp_path / "not_a_label_job"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    corrupt = rlds_fixtures.write_in_subprocess(str(tmp_path / "corrupt"), "bridge", [3, 4, 5, 6])
    shard = next(n for n in os.listdir(corrupt) if ".array_record-" in n)
    path = os.path.join(corrupt, shard)
    data = _bytes(path)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    base = dict(src=metaworld_dir, spec="metaworld", laq_workdir=laq)
    cases = {
        "spec": dict(base, spec="bridge", dst=str(tmp_path / "d1")),
        "small_images": dict(base, src=oxe_dir, spec="oxe_bridge", dst=str(tmp_path / "d2")),
        "frame_gap": dict(base, frame_gap=5, dst=str(tmp_path / "d3")),
        "foreign_dst": dict(base, dst=str(other)),
        "other_args": dict(base, dst=labelled, chunk_episodes=2),
        "already_labelled": dict(
            base,
            src=labelled,
            spec=os.path.join(labelled, "lapa_spec.json"),
            dst=str(tmp_path / "d4"),
        ),
        "corrupt": dict(base, src=corrupt, spec="bridge", dst=str(tmp_path / "d5")),
        "not_a_quantizer": dict(base, laq_workdir=str(tmp_path), dst=str(tmp_path / "d6")),
    }
    before = {
        n: _bytes(os.path.join(labelled, n))
        for n in os.listdir(labelled)
        if os.path.isfile(os.path.join(labelled, n))
    }
    stdout = rlds_fixtures.run_module_or_code(
        code=BAD_INPUT_SCRIPT.replace("sys.argv[1]", repr(json.dumps(cases)))
    )
    got = json.loads(stdout.split("RESULT", 1)[1])
    expect = {
        "spec": "image key 'observation/image_0' is not in the steps",
        "small_images": "smaller than the quantizer's 16x16",
        "frame_gap": "trained at frame gap 2",
        "foreign_dst": "is not a labelling output",
        "other_args": "chunk_episodes: was 1, now 2",
        "already_labelled": "already hold 'latent_action'",
        "corrupt": "unreadable record",
        "not_a_quantizer": "no config.json",
    }
    for name, fragment in expect.items():
        assert fragment in got[name], (name, got[name])
    for d in ("d1", "d2", "d3", "d4", "d6"):
        assert not (tmp_path / d).exists(), d
    assert sorted(os.listdir(other)) == ["keep.txt"]
    after = {n: _bytes(os.path.join(labelled, n)) for n in before}
    assert after == before
