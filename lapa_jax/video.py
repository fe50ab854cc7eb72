"""Video files and frame folders in and out, through PyAV (FFmpeg bindings).

Reading resamples to a requested frame rate by timestamps, so a 30 fps and a 12 fps
video of the same motion give the same number of frames per second of motion, which
is what a frame gap in seconds assumes. Writing is used by tests (to make small
videos) and by the policy evaluation (rollout videos).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class VideoError(ValueError):
    """An unreadable, empty or unusable video; the message names the file."""


def resample_indices(times_s: np.ndarray, fps: float | None) -> np.ndarray:
    """Indices of the frames nearest to 0, 1/fps, 2/fps, ... up to the last timestamp.

    None keeps every frame. Timestamps are taken relative to the first frame.
    """
    times_s = np.asarray(times_s, np.float64)
    if fps is None or len(times_s) == 0:
        return np.arange(len(times_s))
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    rel = times_s - times_s[0]
    targets = np.arange(0.0, rel[-1] + 0.5 / fps, 1.0 / fps)
    return np.abs(rel[None, :] - targets[:, None]).argmin(1)


def read_video(path: str, fps: float | None = None) -> tuple[np.ndarray, float]:
    """uint8 [T, H, W, 3] frames resampled to `fps` (None: as stored), and the source fps."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            frames, times = [], []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                t = frame.time
                times.append(len(times) / float(stream.average_rate or 1) if t is None else t)
            rate = float(stream.average_rate) if stream.average_rate else 0.0
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot decode video: {e}") from e
    if not frames:
        raise VideoError(f"{path}: no frames could be decoded")
    idx = resample_indices(np.asarray(times), fps)
    return np.stack([frames[i] for i in idx]), rate


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def read_frame_folder(
    folder: str, fps: float | None = None, source_fps: float | None = None
) -> np.ndarray:
    """uint8 [T, H, W, 3] from numbered image files, resampled from source_fps to fps."""
    from PIL import Image

    names = sorted(
        (n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)), key=_natural_key
    )
    if not names:
        raise VideoError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    if fps is not None and source_fps is None:
        raise VideoError(f"{folder}: resampling a frame folder to {fps} fps needs its source fps")
    idx = np.arange(len(names))
    if fps is not None:
        idx = resample_indices(np.arange(len(names)) / float(source_fps), fps)
    frames = []
    shape = None
    for i in idx:
        path = os.path.join(folder, names[i])
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"))
        except Exception as e:  # PIL raises many types for corrupt files
            raise VideoError(f"{path}: cannot decode image: {e}") from e
        if shape is not None and img.shape != shape:
            raise VideoError(f"{path}: frame is {img.shape}, earlier frames are {shape}")
        shape = img.shape
        frames.append(img)
    return np.stack(frames)


def write_video(
    path: str, frames_THWC: Sequence[np.ndarray] | np.ndarray, fps: float, codec: str | None = None
) -> str:
    """Writes uint8 RGB frames; the codec follows the extension (mp4: H.264, webm: VP9)."""
    import av

    frames = np.asarray(frames_THWC)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError("no frames to write")
    ext = os.path.splitext(path)[1].lower()
    codec = codec or {".webm": "libvpx-vp9", ".gif": "gif"}.get(ext, "libx264")
    h, w = frames.shape[1:3]
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=round(fps) if fps == round(fps) else fps)
        stream.width, stream.height = w, h
        if codec == "gif":
            stream.pix_fmt = "rgb8"
        else:
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "12", "preset": "veryfast"}
        if codec != "gif" and (h % 2 or w % 2):
            raise ValueError(f"{codec} needs even frame sizes, got {h}x{w}")
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
