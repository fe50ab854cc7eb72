"""data_pipelines.videos_to_rlds and lapa_jax.video: Meta-World frames written to real
video files come back within codec tolerance, labels and frame rates are honoured, the
result trains the quantizer and gets labelled, and bad input fails clearly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_pipelines.videos_to_rlds import find_videos, is_val, load_labels
from lapa_jax.data.sources import EpisodeSource
from lapa_jax.video import read_frame_folder, read_video, resample_indices, write_video
from tests import rlds_fixtures


@pytest.fixture(scope="module")
def clips(metaworld_dir):
    """Three real Meta-World episodes as uint8 frame arrays."""
    src = EpisodeSource(metaworld_dir, "metaworld", "train")
    return [np.stack([src.image(e, t) for t in range(int(src.lengths[e]))]) for e in range(3)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_video_round_trip_within_codec_tolerance(clips, tmp_path, ext):
    frames = clips[0]
    path = write_video(str(tmp_path / f"clip.{ext}"), frames, fps=10)
    back, rate = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8 and rate == 10
    assert _psnr(back, frames) > 30.0, _psnr(back, frames)
    # Resampled to 5 fps: every other frame, by timestamp.
    half, _ = read_video(path, fps=5)
    assert len(half) == (len(frames) + 1) // 2
    np.testing.assert_array_equal(half, back[::2])


def test_resampling_and_frame_folders(clips, tmp_path):
    np.testing.assert_array_equal(resample_indices(np.arange(10) / 30.0, 10.0), [0, 3, 6, 9])
    np.testing.assert_array_equal(resample_indices(np.arange(4) / 10.0, None), [0, 1, 2, 3])
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for t, img in enumerate(clips[1]):  # names that sort wrongly as strings: 1, 10, 2, ...
        Image.fromarray(img).save(folder / f"{t + 1}.png")
    np.testing.assert_array_equal(read_frame_folder(str(folder)), clips[1])
    np.testing.assert_array_equal(
        read_frame_folder(str(folder), fps=5, source_fps=10), clips[1][::2]
    )


def test_labels_formats_and_stable_split(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"1": "push it"}))
    ssv2 = [{"id": "1", "label": "pushing cup", "template": "Pushing [something]"}]
    (tmp_path / "b.json").write_text(json.dumps(ssv2))
    (tmp_path / "c.csv").write_text("id,text\n1,open drawer\n")
    assert load_labels(str(tmp_path / "a.json")) == {"1": "push it"}
    assert load_labels(str(tmp_path / "b.json")) == {"1": "pushing cup"}
    assert load_labels(str(tmp_path / "c.csv")) == {"1": "open drawer"}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_labels(str(tmp_path / "bad.json"))
    (tmp_path / "nolabel.json").write_text(json.dumps([{"id": "1", "count": 3}]))
    with pytest.raises(ValueError, match="no text in any of"):
        load_labels(str(tmp_path / "nolabel.json"))
    ids = [str(i) for i in range(1000)]
    val = [i for i in ids if is_val(i, 0.2)]
    assert 150 < len(val) < 250 and val == [i for i in ids if is_val(i, 0.2)]
    with pytest.raises(ValueError, match="no videos"):
        find_videos(str(tmp_path))


@pytest.fixture(scope="module")
def video_dataset(clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    vids = root / "in"
    vids.mkdir()
    write_video(str(vids / "100.mp4"), clips[0], fps=10)
    write_video(str(vids / "7.webm"), clips[1], fps=10)
    from PIL import Image

    (vids / "55").mkdir()
    for t, img in enumerate(clips[2]):
        Image.fromarray(img).save(vids / "55" / f"{t:04d}.jpg", quality=95)
    (vids / "notes.txt").write_text("not a video")
    labels = root / "labels.json"
    labels.write_text(
        json.dumps(
            [
                {"id": "100", "label": "reach the goal"},
                {"id": "7", "label": "press the button"},
                {"id": "55", "label": "reach again"},
                {"id": "999", "label": "a video we do not have"},
            ]
        )
    )
    dst = str(root / "ds")
    rlds_fixtures.run_module_or_code(
        module_args=[
            "data_pipelines.videos_to_rlds",
            "--videos",
            str(vids),
            "--labels",
            str(labels),
            "--dst",
            dst,
            "--fps",
            "10",
            "--frames_fps",
            "10",
        ]
    )
    return dst, vids


def test_videos_become_an_action_free_rlds_dataset(clips, video_dataset):
    dst, _ = video_dataset
    src = EpisodeSource(dst, os.path.join(dst, "lapa_spec.json"), "train")
    assert not src.spec.has_actions and len(src) == 3
    # Sorted by id as strings: "100", "55", "7".
    expect = {"100": (clips[0], "reach the goal"), "55": (clips[2], "reach again")}
    expect["7"] = (clips[1], "press the button")
    for e in range(3):
        meta = src.episode_metadata(e)
        frames_ref, text = expect[meta["video_id"]]
        frames = np.stack([src.image(e, t) for t in range(int(src.lengths[e]))])
        assert frames.shape == frames_ref.shape
        assert _psnr(frames, frames_ref) > 30.0
        assert src.instruction(e) == text and float(meta["fps"]) == 10.0
    with open(os.path.join(dst, "conversion.json")) as f:
        conv = json.load(f)
    assert conv["episodes"] == {"train": 3, "val": 0} and conv["frames"] == sum(map(len, clips))


def test_video_dataset_trains_the_quantizer_and_gets_labelled(video_dataset, full_run, tmp_path):
    from lapa_jax.trainer import Trainer
    from tests.conftest import tiny_laq_config

    dst, _ = video_dataset
    c = tiny_laq_config(dst, steps=2, checkpoint_every=2, image_every=0)
    c.data.spec = os.path.join(dst, "lapa_spec.json")
    c.data.eval_split = "train"
    state = Trainer(c, str(tmp_path / "laq")).run()
    assert int(state.step) == 2
    laq, _ = full_run
    out = str(tmp_path / "labelled")
    rlds_fixtures.run_module_or_code(
        module_args=[
            "data_pipelines.label_latent_actions",
            "--src",
            dst,
            "--spec",
            "video",
            "--laq_workdir",
            laq,
            "--dst",
            out,
        ]
    )
    lab = EpisodeSource(out, os.path.join(out, "lapa_spec.json"), "train")
    assert len(lab) == 3 and lab.latent_action(0, 0).shape == (4,)


BAD_VIDEO_SCRIPT = r"""
import json, sys
from data_pipelines.videos_to_rlds import convert
cases = json.loads(sys.argv[1])
out = {}
for name, kw in cases.items():
    try:
        res = convert(verbose=False, **kw)
        out[name] = "no error: " + json.dumps(res["skipped"])
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e}"
print("RESULT" + json.dumps(out))
"""


def test_bad_video_input(video_dataset, tmp_path):
    dst, vids = video_dataset
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "1.mp4").write_bytes(os.urandom(4096))
    (broken / "2").mkdir()
    (broken / "2" / "0.png").write_bytes(b"not a png")
    labels = tmp_path / "l.json"
    labels.write_text(json.dumps({"100": "x"}))
    cases = {
        "corrupt": dict(videos=str(broken), dst=str(tmp_path / "o1"), fps=10.0),
        "skip": dict(videos=str(broken), dst=str(tmp_path / "o2"), fps=10.0, skip_bad_videos=True),
        "unlabelled": dict(
            videos=str(vids), dst=str(tmp_path / "o3"), fps=10.0, labels=str(labels)
        ),
        "exists": dict(videos=str(vids), dst=dst, fps=10.0),
        "bad_fps": dict(videos=str(vids), dst=str(tmp_path / "o4"), fps=-1.0),
    }
    code = BAD_VIDEO_SCRIPT.replace("sys.argv[1]", repr(json.dumps(cases)))
    got = json.loads(rlds_fixtures.run_module_or_code(code=code).split("RESULT", 1)[1])
    assert "1.mp4: cannot decode video" in got["corrupt"], got["corrupt"]
    assert "cannot decode" in got["skip"] and "no train episodes" in got["skip"], got["skip"]
    assert "2 of 3 videos have no label" in got["unlabelled"], got["unlabelled"]
    assert "exists and is not empty" in got["exists"]
    assert "--fps must be > 0" in got["bad_fps"]
    for d in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / d).exists()
