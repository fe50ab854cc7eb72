"""Turn a folder of videos (or of frame folders) into an action-free RLDS dataset.

    python -m data_pipelines.videos_to_rlds --videos DIR --labels FILE --dst DIR --fps F

Each video file (mp4, webm, ...: Something-Something v2 ships webm) or each sub-folder
of numbered images becomes one episode: its frames resampled to F frames per second by
timestamp, each step holding `observation/image` and `language_instruction`, with no
action. The episode id is the file or folder name without extension.

`--labels` maps ids to instruction text; it may be a JSON object {id: text}, a JSON list
of objects with "id" and one of "label", "text", "instruction" (Something-Something
v2's train.json / validation.json), or a CSV/TSV file with such a header. With a labels
file every video needs a label (or pass --allow_unlabelled); without one, every
instruction is --default_instruction.

The output opens with `tfds.builder_from_directory(DST)` and `--spec video` (also
written as DST/lapa_spec.json); the quantizer trains on it and the labeller labels it.
It appears at DST only when complete; `conversion.json` records what went in.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lapa_jax.data import rlds_writer
from lapa_jax.data.specs import VIDEO
from lapa_jax.video import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoError,
    read_frame_folder,
    read_video,
)

DATASET_NAME = "videos"
DATASET_VERSION = "1.0.0"
IMAGE_ENCODINGS = ("png", "jpeg")
LABEL_FIELDS = ("label", "text", "instruction")


def find_videos(folder: str) -> list[tuple[str, str, str]]:
    """(id, path, kind) for every video file and frame folder, sorted by id."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--videos {folder} is not a folder")
    found: dict[str, tuple[str, str]] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        stem, ext = os.path.splitext(name)
        if os.path.isdir(path):
            if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in os.listdir(path)):
                vid, kind = name, "frames"
            else:
                continue
        elif ext.lower() in VIDEO_EXTENSIONS:
            vid, kind = stem, "video"
        else:
            continue
        if vid in found:
            raise ValueError(f"two inputs have the id {vid!r}: {found[vid][0]} and {path}")
        found[vid] = (path, kind)
    if not found:
        raise ValueError(
            f"{folder} holds no videos ({', '.join(VIDEO_EXTENSIONS)}) and no frame folders"
        )
    return [(vid, path, kind) for vid, (path, kind) in sorted(found.items())]


def load_labels(path: str) -> dict[str, str]:
    """id -> instruction text, from JSON (object or list of records) or CSV/TSV."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"labels file {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"labels file {path} is not valid JSON: {e}") from e
        if isinstance(data, dict):
            records = [{"id": k, "label": v} for k, v in data.items()]
        elif isinstance(data, list):
            records = data
        else:
            raise ValueError(f"labels file {path}: expected a JSON object or list")
    elif ext in (".csv", ".tsv"):
        with open(path, newline="") as f:
            records = list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
    else:
        raise ValueError(f"labels file {path}: use .json, .csv or .tsv")
    labels: dict[str, str] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "id" not in rec:
            raise ValueError(f"labels file {path}: record {i} has no 'id': {rec!r}")
        field = next((k for k in LABEL_FIELDS if k in rec), None)
        if field is None or not isinstance(rec[field], str):
            raise ValueError(
                f"labels file {path}: record {i} (id {rec['id']!r}) has no text in any of "
                f"{list(LABEL_FIELDS)}"
            )
        labels[str(rec["id"])] = rec[field]
    return labels


def is_val(video_id: str, val_fraction: float) -> bool:
    """A stable split: the same id lands in the same split on every run and machine."""
    h = int.from_bytes(hashlib.sha1(video_id.encode()).digest()[:4], "big")
    return h / 2**32 < val_fraction


def resize_to_height(frames_THWC: np.ndarray, height: int | None) -> np.ndarray:
    if height is None or frames_THWC.shape[1] == height:
        return frames_THWC
    from PIL import Image

    h, w = frames_THWC.shape[1:3]
    width = max(1, round(w * height / h))
    resample = Image.Resampling.BOX if height < h else Image.Resampling.BILINEAR
    return np.stack(
        [np.asarray(Image.fromarray(f).resize((width, height), resample)) for f in frames_THWC]
    )


def features(image_encoding: str) -> Any:
    import tensorflow_datasets as tfds

    f = tfds.features
    return f.FeaturesDict(
        {
            "steps": f.Dataset(
                {
                    "observation": f.FeaturesDict(
                        {
                            "image": f.Image(
                                shape=(None, None, 3),
                                dtype=np.uint8,
                                encoding_format=image_encoding,
                            )
                        }
                    ),
                    "language_instruction": f.Text(),
                    "is_first": f.Scalar(dtype=np.bool_),
                    "is_last": f.Scalar(dtype=np.bool_),
                    "is_terminal": f.Scalar(dtype=np.bool_),
                    "reward": f.Scalar(dtype=np.float32),
                    "discount": f.Scalar(dtype=np.float32),
                }
            ),
            "episode_metadata": f.FeaturesDict(
                {
                    "video_id": f.Text(),
                    "source": f.Text(),
                    "fps": f.Scalar(dtype=np.float32),
                    "source_fps": f.Scalar(dtype=np.float32),
                }
            ),
        }
    )


def to_example(
    video_id: str, source: str, frames: np.ndarray, text: str, fps: float, source_fps: float
) -> dict[str, Any]:
    n = len(frames)
    return {
        "steps": {
            "observation": {"image": frames},
            "language_instruction": [text] * n,
            "is_first": np.arange(n) == 0,
            "is_last": np.arange(n) == n - 1,
            "is_terminal": np.zeros(n, bool),  # a clip ends; the world does not
            "reward": np.zeros(n, np.float32),
            "discount": np.ones(n, np.float32),
        },
        "episode_metadata": {
            "video_id": video_id,
            "source": source,
            "fps": np.float32(fps),
            "source_fps": np.float32(source_fps),
        },
    }


def convert(
    videos: str,
    dst: str,
    fps: float | None,
    labels: str | None = None,
    frames_fps: float | None = None,
    image_height: int | None = None,
    max_frames: int = 0,
    val_fraction: float = 0.0,
    image_encoding: str = "png",
    default_instruction: str = "",
    allow_unlabelled: bool = False,
    skip_bad_videos: bool = False,
    file_format: str = "array_record",
    overwrite: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    if fps is not None and fps <= 0:
        raise ValueError(f"--fps must be > 0, got {fps}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    if image_encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"image_encoding must be one of {IMAGE_ENCODINGS}, got {image_encoding!r}")
    if image_height is not None and image_height < 2:
        raise ValueError(f"--image_height must be >= 2, got {image_height}")
    if max_frames < 0:
        raise ValueError(f"--max_frames must be >= 0, got {max_frames}")
    inputs = find_videos(videos)
    label_map = load_labels(labels) if labels else None
    if label_map is not None and not allow_unlabelled:
        missing = [vid for vid, _, _ in inputs if vid not in label_map]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(inputs)} videos have no label in {labels}, e.g. "
                f"{missing[:5]}; pass --allow_unlabelled to give them --default_instruction"
            )
    dst = rlds_writer.check_destination(dst, overwrite)
    summary: dict[str, Any] = {
        "videos": os.path.abspath(videos),
        "labels": os.path.abspath(labels) if labels else None,
        "fps": fps,
        "frames_fps": frames_fps,
        "image_height": image_height,
        "max_frames": max_frames,
        "val_fraction": val_fraction,
        "episodes": {"train": 0, "val": 0},
        "frames": 0,
        "skipped": [],
    }
    t0 = time.perf_counter()

    def episodes(split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for vid, path, kind in inputs:
            if is_val(vid, val_fraction) != (split == "val"):
                continue
            try:
                if kind == "video":
                    frames, source_fps = read_video(path, fps)
                else:
                    frames = read_frame_folder(path, fps, frames_fps)
                    source_fps = frames_fps or fps or 0.0
                if max_frames:
                    frames = frames[:max_frames]
                if len(frames) < 2:
                    raise VideoError(
                        f"{path}: {len(frames)} frame(s) at {fps} fps; an episode needs 2 or more"
                    )
            except VideoError as e:
                if not skip_bad_videos:
                    raise
                summary["skipped"].append({"id": vid, "error": str(e)})
                continue
            frames = resize_to_height(frames, image_height)
            text = (
                default_instruction
                if label_map is None
                else label_map.get(vid, default_instruction)
            )
            rel = os.path.relpath(path, videos)
            summary["episodes"][split] += 1
            summary["frames"] += len(frames)
            if verbose:
                n = summary["episodes"]["train"] + summary["episodes"]["val"]
                print(f"[videos] {n}/{len(inputs)} {vid}: {len(frames)} frames", flush=True)
            yield vid, to_example(vid, rel, frames, text, fps or source_fps, source_fps)
        if split == "train" and summary["episodes"]["train"] == 0:
            # Raised inside the writer: its staging folder goes, nothing appears at dst.
            raise ValueError(
                f"no train episodes to write from {videos}; skipped: {summary['skipped']}"
            )

    splits = {"train": episodes("train")}
    if val_fraction > 0:
        splits["val"] = episodes("val")

    def conversion() -> str:
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        return json.dumps(summary, indent=2)

    rlds_writer.write_rlds(
        dst,
        name=DATASET_NAME,
        version=DATASET_VERSION,
        features=features(image_encoding),
        split_examples=splits,
        file_format=file_format,
        description=f"Action-free episodes from the videos in {os.path.abspath(videos)}",
        overwrite=overwrite,
        extra_files={
            "conversion.json": conversion,
            "lapa_spec.json": json.dumps(VIDEO.to_json(), indent=2),
        },
        verbose=verbose,
    )
    if file_format == "array_record":
        from lapa_jax.data import sources, statistics

        source = sources.EpisodeSource(dst, VIDEO, split="train")
        statistics.save_statistics(dst, statistics.compute_statistics(source), "train")
    if verbose:
        print(
            f"[videos] wrote {summary['episodes']} episodes, {summary['frames']} frames "
            f"({len(summary['skipped'])} skipped) to {dst}",
            flush=True,
        )
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--videos", required=True, help="folder of video files or frame folders")
    p.add_argument("--labels", default=None, help="id -> instruction (.json, .csv, .tsv)")
    p.add_argument("--dst", required=True, help="dataset folder to create")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: as stored)")
    p.add_argument("--frames_fps", type=float, default=None, help="frame rate of frame folders")
    p.add_argument("--image_height", type=int, default=None, help="resize, keeping the aspect")
    p.add_argument("--max_frames", type=int, default=0, help="cap per episode (0: none)")
    p.add_argument("--val_fraction", type=float, default=0.0)
    p.add_argument("--image_encoding", default="png", choices=IMAGE_ENCODINGS)
    p.add_argument("--default_instruction", default="")
    p.add_argument("--allow_unlabelled", action="store_true")
    p.add_argument("--skip_bad_videos", action="store_true", help="skip and record them")
    p.add_argument("--file_format", default="array_record", choices=rlds_writer.FILE_FORMATS)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    return convert(
        a.videos,
        a.dst,
        a.fps,
        labels=a.labels,
        frames_fps=a.frames_fps,
        image_height=a.image_height,
        max_frames=a.max_frames,
        val_fraction=a.val_fraction,
        image_encoding=a.image_encoding,
        default_instruction=a.default_instruction,
        allow_unlabelled=a.allow_unlabelled,
        skip_bad_videos=a.skip_bad_videos,
        file_format=a.file_format,
        overwrite=a.overwrite,
    )


if __name__ == "__main__":
    main()
