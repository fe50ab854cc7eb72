"""Grain pipelines over RLDS episodes: frame pairs for the quantizer, steps for the policy.

Both are random-access sources over a flat index of (episode, t), so a global shuffle
samples uniformly over every valid t of every episode. The loader shuffles with one
seed on every host, repeats, then gives host k every n-th element: hosts see disjoint
data and the same seed gives the same batches. The iterator's state (`get_state`,
`set_state`, or Orbax through `grain.checkpoint`) restores the exact data position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from lapa_jax.data.sources import DataError, EpisodeSource

RESIZE_MODES = ("crop", "pad")
IMAGE_DTYPES = ("float32", "uint8")


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    size: int = 64
    resize_mode: str = "crop"  # non-square sources: centre-crop, or pad with black
    dtype: str = "float32"  # float32 in [0, 1], or uint8

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"image size must be a positive int, got {self.size!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.dtype not in IMAGE_DTYPES:
            raise ValueError(f"image dtype must be one of {IMAGE_DTYPES}, got {self.dtype!r}")


def square_image(img_HWC: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3], centre-cropped or padded to square first."""
    h, w = img_HWC.shape[:2]
    if h != w:
        if mode == "crop":
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            img_HWC = img_HWC[top : top + s, left : left + s]
        else:
            s = max(h, w)
            out = np.zeros((s, s, img_HWC.shape[2]), img_HWC.dtype)
            top, left = (s - h) // 2, (s - w) // 2
            out[top : top + h, left : left + w] = img_HWC
            img_HWC = out
    if img_HWC.shape[0] != size:
        from PIL import Image

        resample = Image.Resampling.BILINEAR if img_HWC.shape[0] < size else Image.Resampling.BOX
        img_HWC = np.asarray(Image.fromarray(img_HWC).resize((size, size), resample))
    return np.ascontiguousarray(img_HWC)


def to_dtype(img: np.ndarray, dtype: str) -> np.ndarray:
    return img.astype(np.float32) / 255.0 if dtype == "float32" else img


def frame_gap_in_frames(frame_gap: int | None, seconds: float | None, fps: float | None) -> int:
    """The frame gap H, given directly in frames or as seconds at a dataset's frame rate."""
    if frame_gap is not None and seconds is not None:
        raise ValueError("give the frame gap in frames or in seconds, not both")
    if seconds is not None:
        if not fps or fps <= 0:
            raise ValueError(f"a frame gap in seconds needs a positive fps, got {fps!r}")
        frame_gap = max(1, round(seconds * fps))
    if frame_gap is None or int(frame_gap) < 1:
        raise ValueError(f"frame gap must be >= 1 frame, got {frame_gap!r}")
    return int(frame_gap)


class _FlatIndex:
    """Maps a flat index to (episode, t) over per-episode counts."""

    def __init__(self, counts: np.ndarray, what: str):
        self.counts = np.asarray(counts, np.int64)
        self.ends = np.cumsum(self.counts)
        if len(self.ends) == 0 or self.ends[-1] == 0:
            raise DataError(f"no valid {what}")

    def __len__(self) -> int:
        return int(self.ends[-1])

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range [0, {len(self)})")
        episode = int(np.searchsorted(self.ends, index, side="right"))
        start = int(self.ends[episode] - self.counts[episode])
        return episode, int(index - start)


class FramePairSource:
    """(x_t, x_{t+H}) pairs. With `clip_to_last` (the paper's choice) every t but the last
    of an episode is valid and the second frame is min(t+H, L-1); without it only
    t <= L-1-H is valid, so every pair is exactly H apart."""

    def __init__(
        self,
        source: EpisodeSource,
        frame_gap: int,
        image: ImageConfig = ImageConfig(),
        clip_to_last: bool = True,
        with_actions: bool | None = None,
    ):
        self.source = source
        self.frame_gap = frame_gap_in_frames(frame_gap, None, None)
        self.image = image
        self.clip_to_last = clip_to_last
        self.with_actions = source.spec.has_actions if with_actions is None else with_actions
        if self.with_actions and not source.spec.has_actions:
            raise DataError(f"spec {source.spec.name!r} has no actions; set with_actions=False")
        lengths = source.lengths
        counts = lengths - 1 if clip_to_last else np.maximum(lengths - self.frame_gap, 0)
        self.index = _FlatIndex(
            counts, f"frame pairs with gap {self.frame_gap} in {source.data_dir}"
        )

    def __len__(self) -> int:
        return len(self.index)

    def pair_indices(self, index: int) -> tuple[int, int, int]:
        episode, t = self.index.locate(index)
        last = int(self.source.lengths[episode]) - 1
        return episode, t, min(t + self.frame_gap, last)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        episode, t, t2 = self.pair_indices(int(index))
        steps = self.source.steps(episode)
        frames = [
            square_image(
                self.source.image(episode, k, steps), self.image.size, self.image.resize_mode
            )
            for k in (t, t2)
        ]
        out = {
            "frames": to_dtype(np.stack(frames), self.image.dtype),
            "episode": np.int32(episode),
            "t": np.int32(t),
            "gap": np.int32(t2 - t),
        }
        if self.with_actions:
            # The actions taken between the two frames, zero-padded when clipped.
            acts = np.zeros((self.frame_gap, self.source.action_dim), np.float32)
            mask = np.zeros((self.frame_gap,), bool)
            for j, k in enumerate(range(t, t2)):
                acts[j] = self.source.action(episode, k, steps)
                mask[j] = True
            out["actions"] = acts
            out["action_mask"] = mask
        return out


class StepSource:
    """Single steps: image, instruction, and (where the spec has them) action, latent action."""

    def __init__(
        self,
        source: EpisodeSource,
        image: ImageConfig = ImageConfig(),
        with_actions: bool | None = None,
        with_latent_actions: bool | None = None,
        with_state: bool = False,
    ):
        self.source = source
        self.image = image
        spec = source.spec
        self.with_actions = spec.has_actions if with_actions is None else with_actions
        self.with_latent = (
            spec.latent_action_key is not None
            if with_latent_actions is None
            else with_latent_actions
        )
        self.with_state = with_state
        if self.with_actions and not spec.has_actions:
            raise DataError(f"spec {spec.name!r} has no actions; set with_actions=False")
        if self.with_latent and spec.latent_action_key is None:
            raise DataError(f"spec {spec.name!r} has no latent_action_key")
        self.index = _FlatIndex(source.lengths, f"steps in {source.data_dir}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode, t = self.index.locate(int(index))
        steps = self.source.steps(episode)
        img = square_image(
            self.source.image(episode, t, steps), self.image.size, self.image.resize_mode
        )
        out: dict[str, Any] = {
            "image": to_dtype(img, self.image.dtype),
            "instruction": self.source.instruction(episode, t, steps),
            "episode": np.int32(episode),
            "t": np.int32(t),
        }
        if self.with_actions:
            out["action"] = self.source.action(episode, t, steps)
        if self.with_latent:
            out["latent_action"] = self.source.latent_action(episode, t, steps)
        if self.with_state:
            out["state"] = self.source.state(episode, t, steps)
        return out


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    global_batch_size: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever
    drop_remainder: bool = True
    worker_count: int = 0  # Grain worker processes (0: load in this process)
    worker_buffer_size: int = 4
    # Threads reading and decoding in this process; keep small on few-core machines
    # where they compete with the training step for the same cores.
    read_threads: int = 2
    prefetch_buffer_size: int = 64
    # Default: this JAX process's index and the process count (ShardByJaxProcess).
    shard_index: int | None = None
    shard_count: int | None = None

    def shard(self) -> tuple[int, int]:
        if self.shard_index is None or self.shard_count is None:
            opts = grain.sharding.ShardByJaxProcess(drop_remainder=True)
            index, count = opts.shard_index, opts.shard_count
        else:
            index, count = self.shard_index, self.shard_count
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"invalid shard {index} of {count}")
        return index, count

    def host_batch_size(self) -> int:
        _, count = self.shard()
        if self.global_batch_size < 1 or self.global_batch_size % count:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} must be a positive multiple of the "
                f"number of hosts ({count})"
            )
        return self.global_batch_size // count


def _mark_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside an absl app none were parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(source: Sequence[Any] | Any, config: LoaderConfig) -> grain.IterDataset:
    """A batched, host-sharded, checkpointable Grain dataset over a random-access source.

    Iterate with `iter(...)`; the iterator has get_state/set_state and saves through
    Orbax with `grain.checkpoint.CheckpointSave(iterator)`.
    """
    index, count = config.shard()
    per_host = config.host_batch_size()
    ds = grain.MapDataset.source(source)
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)  # before repeat: each epoch is shuffled anew
    ds = ds.repeat(config.num_epochs)
    if count > 1:
        ds = ds[index::count]
    ds = ds.batch(per_host, drop_remainder=config.drop_remainder)
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_buffer_size
        )
    )
    if config.worker_count > 0:
        _mark_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size
            )
        )
    return it_ds
