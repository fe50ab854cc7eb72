"""Label an RLDS dataset with a trained quantizer's latent actions.

    python -m data_pipelines.label_latent_actions --src DIR --spec NAME \\
        --laq_workdir DIR --dst DIR [--frame_gap H] [--batch_size B] [--save_vectors]

Reads any RLDS/TFDS dataset a spec describes (tfrecord or array_record), runs the
quantizer's encoder on every pair (x_t, x_{t+H}) and writes a new TFDS/RLDS dataset with
every original feature kept (encoded images are copied byte for byte) plus, per step:

- `latent_action` int32 [L]: the codes of the pair (x_t, x_{min(t+H, T-1)});
- `latent_action_gap` int32: the gap that pair really spans. The last H steps of an
  episode have no frame H ahead; like the quantizer's training pairs (clip_to_last),
  they are paired with the episode's last frame, so their gap is T-1-t < H, and the
  last step is paired with itself (gap 0: the code of "no change"). Filter on the gap
  to keep only full-gap labels;
- `latent_action_vector` float32 [L, D] (with --save_vectors): the quantized vectors.

The output opens with `tfds.builder_from_directory(DST)`, and holds
`lapa_labels.json` (which checkpoint, step and frame gap produced it; a label
histogram), `lapa_spec.json` (the spec to read it with, e.g. `--spec DST/lapa_spec.json`)
and `dataset_statistics_{split}.json`.

Work is split into chunks of episodes, one output shard each. A shard is written under a
temporary name and renamed when complete; a chunk counts as done only once its
summary is written after that. Killed at any point and re-run with the same arguments,
the labeller redoes only unfinished chunks, and the result is identical to an
uninterrupted run. With several processes (`jax.distributed`, or --process_index and
--process_count), process p labels the chunks c with c % count == p and process 0 writes
the dataset's metadata once every chunk is done. The dataset becomes visible to TFDS
only when its dataset_info.json, written last, appears.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lapa_jax.data import rlds_writer
from lapa_jax.data import specs as specs_lib
from lapa_jax.data.pipelines import square_image
from lapa_jax.data.rlds_records import EpisodeReader, RecordWriter
from lapa_jax.data.sources import (
    LABELS_FILE,
    DataError,
    _get_path,
    check_steps_spec,
    decode_image,
    image_feature_paths,
)
from lapa_jax.data.statistics import save_statistics, statistics_from_arrays

LABEL_KEY = "latent_action"
GAP_KEY = "latent_action_gap"
VECTOR_KEY = "latent_action_vector"
JOB_FILE = "lapa_labelling_job.json"
SPEC_FILE = "lapa_spec.json"
CHUNK_DIR = ".lapa_chunks"
FILE_FORMATS = rlds_writer.FILE_FORMATS


@dataclasses.dataclass(frozen=True)
class LabelJob:
    """Everything that decides the output; a re-run must match it to resume."""

    src: str
    spec: dict[str, Any]
    laq_workdir: str
    laq_step: int
    frame_gap: int
    splits: tuple[str, ...]
    chunk_episodes: int
    batch_size: int
    save_vectors: bool
    file_format: str
    skip_bad_episodes: bool

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["splits"] = list(self.splits)
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]


# ---- reading ----------------------------------------------------------------------------


def _frames(
    episode: dict[str, Any], spec: specs_lib.DatasetSpec, size: int, mode: str, where: str
) -> np.ndarray:
    """uint8 [T, size, size, 3]: the episode's images as the quantizer saw them."""
    out = []
    for t, step in enumerate(episode["steps"]):
        img = decode_image(_get_path(step, spec.image_key), f"{where} step {t}")
        h, w = img.shape[:2]
        side = min(h, w) if mode == "crop" else max(h, w)
        if side < size:
            raise DataError(
                f"{where} step {t}: image {h}x{w} is smaller than the quantizer's {size}x{size} "
                "input; labelling would upsample it to something the quantizer never saw"
            )
        out.append(square_image(img, size, mode))
    return np.stack(out)


def _check_actions(
    episode: dict[str, Any], spec: specs_lib.DatasetSpec, where: str
) -> np.ndarray | None:
    if not spec.has_actions:
        return None
    rows = []
    for t, step in enumerate(episode["steps"]):
        parts = [np.asarray(_get_path(step, k), np.float32).reshape(-1) for k in spec.action_keys]
        row = np.concatenate(parts)
        if not np.all(np.isfinite(row)):
            raise DataError(f"{where} step {t}: non-finite action values {row.tolist()}")
        rows.append(row)
    return np.stack(rows)


def pair_indices(length: int, frame_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """(second-frame index, gap) per step: t + H, clipped to the last frame."""
    t = np.arange(length)
    second = np.minimum(t + frame_gap, length - 1)
    return second, (second - t).astype(np.int32)


# ---- the labeller ---------------------------------------------------------------------


@dataclasses.dataclass
class ChunkResult:
    split: str
    chunk: int
    episodes: list[tuple[int, dict[str, Any]]]
    codes_NL: np.ndarray
    gaps_N: np.ndarray
    vectors_NLD: np.ndarray | None
    actions_NA: np.ndarray | None
    lengths: np.ndarray
    skipped: list[dict[str, Any]]
    encode_s: float


class Labeller:
    def __init__(
        self,
        src: str,
        spec: str,
        laq_workdir: str,
        dst: str,
        frame_gap: int | None = None,
        batch_size: int = 256,
        laq_step: int | None = None,
        splits: Sequence[str] | None = None,
        chunk_episodes: int = 32,
        save_vectors: bool = False,
        file_format: str = "array_record",
        skip_bad_episodes: bool = False,
        process_index: int = 0,
        process_count: int = 1,
        verbose: bool = True,
    ):
        import tensorflow_datasets as tfds

        from lapa_jax.latent_encoder import LatentActionEncoder

        self.verbose = verbose
        self.src = os.path.abspath(src)
        self.dst = os.path.abspath(dst)
        if file_format not in FILE_FORMATS:
            raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
        if chunk_episodes < 1:
            raise ValueError(f"chunk_episodes must be >= 1, got {chunk_episodes}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if self.dst == self.src:
            raise ValueError("--dst must differ from --src: the source is never written to")
        if not os.path.isfile(os.path.join(self.src, "dataset_info.json")):
            raise FileNotFoundError(
                f"{self.src} is not a TFDS dataset folder (no dataset_info.json)"
            )
        self.spec = specs_lib.get_spec(spec)
        self.builder = tfds.builder_from_directory(self.src)
        where = f"dataset {self.builder.info.name!r} ({self.src})"
        info = check_steps_spec(self.builder.info.features, self.spec, where)
        steps_feature = self.builder.info.features["steps"].feature
        for key in (LABEL_KEY, GAP_KEY, VECTOR_KEY):
            if key in steps_feature:
                raise DataError(
                    f"{where}: the steps already hold {key!r}; label the unlabelled source"
                )
        available = list(self.builder.info.splits)
        self.splits = tuple(splits) if splits else tuple(available)
        missing = [s for s in self.splits if s not in available]
        if missing:
            raise DataError(f"{where}: no splits {missing}; splits: {available}")

        self.encoder = LatentActionEncoder(laq_workdir, laq_step, batch_size)
        enc = self.encoder
        h, w = info.image_shape[:2]
        if h is not None and w is not None:
            side = min(h, w) if enc.resize_mode == "crop" else max(h, w)
            if side < enc.image_size:
                raise DataError(
                    f"{where}: images are {h}x{w}, smaller than the quantizer's "
                    f"{enc.image_size}x{enc.image_size} input ({enc.workdir})"
                )
        if frame_gap is not None and frame_gap != enc.frame_gap:
            raise ValueError(
                f"the quantizer in {enc.workdir} was trained at frame gap {enc.frame_gap}; "
                f"--frame_gap {frame_gap} would give labels for motions it never learned. "
                "Omit --frame_gap or pass the trained one"
            )
        self.frame_gap = enc.frame_gap
        self.job = LabelJob(
            src=self.src,
            spec=self.spec.to_json(),
            laq_workdir=enc.workdir,
            laq_step=int(enc.step),
            frame_gap=self.frame_gap,
            splits=self.splits,
            chunk_episodes=chunk_episodes,
            batch_size=enc.batch_size,
            save_vectors=save_vectors,
            file_format=file_format,
            skip_bad_episodes=skip_bad_episodes,
        )
        self.process_index, self.process_count = process_index, process_count
        self.image_paths = image_feature_paths(steps_feature)
        self.readers = {s: EpisodeReader(self.builder, s, self.image_paths) for s in self.splits}
        self.name = f"{self.builder.info.name}_latent"
        self.features = self._output_features()
        self._serializer: Any = None

    # ---- layout --------------------------------------------------------------------

    def _output_features(self) -> Any:
        import tensorflow_datasets as tfds

        src = self.builder.info.features
        steps = dict(src["steps"].feature.items())
        steps[LABEL_KEY] = tfds.features.Tensor(shape=(self.encoder.num_tokens,), dtype=np.int32)
        steps[GAP_KEY] = tfds.features.Scalar(dtype=np.int32)
        if self.job.save_vectors:
            steps[VECTOR_KEY] = tfds.features.Tensor(
                shape=(self.encoder.num_tokens, self.encoder.latent_dim), dtype=np.float32
            )
        top = {k: v for k, v in src.items() if k != "steps"}
        top["steps"] = tfds.features.Dataset(steps)
        return tfds.features.FeaturesDict(top)

    def _serialize(self, example: dict[str, Any]) -> bytes:
        """A tf.train.Example with its feature map in sorted order: the default
        serialization orders map entries arbitrarily, so equal content could give
        different bytes from run to run."""
        if self._serializer is None:
            from tensorflow_datasets.core.example_serializer import ExampleSerializer

            self._serializer = ExampleSerializer(self.features.get_serialized_info())
        proto = self._serializer.get_tf_example(self.features.encode_example(example))
        return proto.SerializeToString(deterministic=True)

    def num_chunks(self, split: str) -> int:
        return max(1, math.ceil(self.readers[split].num_episodes / self.job.chunk_episodes))

    def shard_path(self, split: str, chunk: int) -> str:
        n = self.num_chunks(split)
        fmt = self.job.file_format
        return os.path.join(self.dst, f"{self.name}-{split}.{fmt}-{chunk:05d}-of-{n:05d}")

    def summary_path(self, split: str, chunk: int) -> str:
        return os.path.join(self.dst, CHUNK_DIR, f"{split}-{chunk:05d}.npz")

    def all_chunks(self) -> list[tuple[str, int]]:
        return [(s, c) for s in self.splits for c in range(self.num_chunks(s))]

    def my_chunks(self) -> list[tuple[str, int]]:
        return [
            sc
            for i, sc in enumerate(self.all_chunks())
            if i % self.process_count == self.process_index
        ]

    def is_done(self, split: str, chunk: int) -> bool:
        return os.path.isfile(self.summary_path(split, chunk)) and os.path.isfile(
            self.shard_path(split, chunk)
        )

    def is_finished(self) -> bool:
        return os.path.isfile(os.path.join(self.dst, "dataset_info.json"))

    def prepare_destination(self) -> None:
        """Claims DST for this job, or checks that it holds this job; nothing is written
        over outputs of another job or over any other folder."""
        job_path = os.path.join(self.dst, JOB_FILE)
        if self.process_index != 0:  # process 0 claims the folder; the others follow it
            deadline = time.monotonic() + 600
            while not os.path.isfile(job_path) and time.monotonic() < deadline:
                time.sleep(1.0)
        if os.path.isdir(self.dst) and os.listdir(self.dst):
            if not os.path.isfile(job_path):
                raise FileExistsError(
                    f"{self.dst} exists and is not a labelling output; choose another --dst"
                )
            with open(job_path) as f:
                previous = json.load(f)
            mine = self.job.to_json()
            diff = sorted(k for k in mine if previous.get(k) != mine[k])
            if diff:
                details = "; ".join(f"{k}: was {previous.get(k)!r}, now {mine[k]!r}" for k in diff)
                raise ValueError(
                    f"{self.dst} holds a labelling job with other arguments ({details}). "
                    "Re-run with the same arguments to resume, or choose another --dst"
                )
            return
        if os.path.exists(self.dst) and not os.path.isdir(self.dst):
            raise FileExistsError(f"{self.dst} exists and is not a folder")
        os.makedirs(os.path.join(self.dst, CHUNK_DIR), exist_ok=True)
        _write_json_atomic(job_path, self.job.to_json())

    # ---- one chunk -----------------------------------------------------------------

    def read_chunk(self, split: str, chunk: int) -> tuple[ChunkResult, list[np.ndarray]]:
        reader = self.readers[split]
        start = chunk * self.job.chunk_episodes
        stop = min(start + self.job.chunk_episodes, reader.num_episodes)
        enc = self.encoder
        kept, frames, actions, skipped = [], [], [], []
        for i, episode in reader.episodes(start, stop):
            where = f"{self.src} split {split!r} episode {i}"
            try:
                if len(episode["steps"]) == 0:
                    raise DataError(f"{where}: empty episode (0 steps)")
                acts = _check_actions(episode, self.spec, where)
                fr = _frames(episode, self.spec, enc.image_size, enc.resize_mode, where)
            except DataError as e:
                if not self.job.skip_bad_episodes:
                    raise
                skipped.append({"split": split, "episode": i, "error": str(e)})
                continue
            kept.append((i, episode))
            frames.append(fr)
            actions.append(acts)
        return ChunkResult(
            split=split,
            chunk=chunk,
            episodes=kept,
            codes_NL=np.zeros((0, enc.num_tokens), np.int32),
            gaps_N=np.zeros((0,), np.int32),
            vectors_NLD=None,
            actions_NA=np.concatenate(actions) if kept and self.spec.has_actions else None,
            lengths=np.asarray([len(e["steps"]) for _, e in kept], np.int64),
            skipped=skipped,
            encode_s=0.0,
        ), frames

    def encode_chunk(self, result: ChunkResult, frames: list[np.ndarray]) -> ChunkResult:
        t0 = time.perf_counter()
        enc = self.encoder
        pairs_index = []  # (episode in chunk, t, second)
        gaps = []
        for e, fr in enumerate(frames):
            second, gap = pair_indices(len(fr), self.frame_gap)
            pairs_index.extend((e, t, int(second[t])) for t in range(len(fr)))
            gaps.append(gap)
        codes, vectors = [], []
        for start in range(0, len(pairs_index), enc.batch_size):
            batch = pairs_index[start : start + enc.batch_size]
            pairs = np.stack([np.stack([frames[e][t], frames[e][s]]) for e, t, s in batch])
            c, v = enc.encode(pairs)
            codes.append(c)
            vectors.append(v)
        if codes:
            result.codes_NL = np.concatenate(codes)
            result.gaps_N = np.concatenate(gaps)
            if self.job.save_vectors:
                result.vectors_NLD = np.concatenate(vectors)
        result.encode_s = time.perf_counter() - t0
        return result

    def write_chunk(self, result: ChunkResult) -> None:
        path = self.shard_path(result.split, result.chunk)
        tmp = f"{path}.tmp-{os.getpid()}"
        writer = RecordWriter(tmp, self.job.file_format)
        offset = 0
        try:
            for _, episode in result.episodes:
                steps = []
                for step in episode["steps"]:
                    step = dict(step)
                    step[LABEL_KEY] = result.codes_NL[offset]
                    step[GAP_KEY] = result.gaps_N[offset]
                    if result.vectors_NLD is not None:
                        step[VECTOR_KEY] = result.vectors_NLD[offset]
                    steps.append(step)
                    offset += 1
                writer.write(self._serialize({**episode, "steps": steps}))
        finally:
            writer.close()
        os.replace(tmp, path)
        _fault_point("after_shard", result.chunk)
        summary = {
            "codes": result.codes_NL,
            "gaps": result.gaps_N,
            "lengths": result.lengths,
            "num_bytes": np.int64(os.path.getsize(path)),
            "skipped": np.asarray(json.dumps(result.skipped)),
        }
        if result.actions_NA is not None:
            summary["actions"] = result.actions_NA
        spath = self.summary_path(result.split, result.chunk)
        os.makedirs(os.path.dirname(spath), exist_ok=True)
        stmp = f"{spath}.tmp-{os.getpid()}.npz"
        np.savez(stmp, **summary)
        os.replace(stmp, spath)
        _fault_point("after_summary", result.chunk)

    # ---- the whole job -------------------------------------------------------------

    def run(self, wait_timeout_s: float = 24 * 3600.0) -> dict[str, Any]:
        if self.is_finished():
            self.prepare_destination()  # still refuses other arguments
            self._log(f"{self.dst} is already complete")
            return self.report(pairs_per_s=None)
        self.prepare_destination()
        todo = [sc for sc in self.my_chunks() if not self.is_done(*sc)]
        for split, chunk in todo:  # what a killed run left half-written
            for path in (self.shard_path(split, chunk), self.summary_path(split, chunk)):
                folder, base = os.path.split(path)
                for name in os.listdir(folder):
                    if name.startswith(base + ".tmp-"):
                        os.remove(os.path.join(folder, name))
        n_all = len(self.my_chunks())
        self._log(
            f"labelling {self.src} -> {self.dst} with {self.encoder.checkpoint_path} "
            f"(frame gap {self.frame_gap}); process {self.process_index}/{self.process_count}: "
            f"{len(todo)} of {n_all} chunks to do"
        )
        pairs, encode_s, t0 = 0, 0.0, time.perf_counter()
        # Read chunk k+1 and write chunk k-1 while chunk k is encoded.
        with (
            concurrent.futures.ThreadPoolExecutor(1) as read_pool,
            concurrent.futures.ThreadPoolExecutor(1) as write_pool,
        ):
            pending_read = read_pool.submit(self.read_chunk, *todo[0]) if todo else None
            pending_write: concurrent.futures.Future | None = None
            for k, (split, chunk) in enumerate(todo):
                assert pending_read is not None
                result, frames = pending_read.result()
                if k + 1 < len(todo):
                    pending_read = read_pool.submit(self.read_chunk, *todo[k + 1])
                result = self.encode_chunk(result, frames)
                if pending_write is not None:
                    pending_write.result()
                pending_write = write_pool.submit(self.write_chunk, result)
                pairs += len(result.codes_NL)
                encode_s += result.encode_s
                elapsed = time.perf_counter() - t0
                self._log(
                    f"  {split} chunk {chunk + 1}/{self.num_chunks(split)}: "
                    f"{len(result.codes_NL)} pairs; {pairs / max(elapsed, 1e-9):.0f} pairs/s so far"
                )
            if pending_write is not None:
                pending_write.result()
        elapsed = time.perf_counter() - t0
        rate = pairs / elapsed if pairs else None
        if pairs:
            self._log(
                f"labelled {pairs} pairs in {elapsed:.1f} s: {rate:.0f} pairs/s end to end "
                f"({pairs / max(encode_s, 1e-9):.0f} pairs/s in the encoder)"
            )
        if self.process_index != 0:
            return {"pairs": pairs, "pairs_per_s": rate}
        self._wait_for_all(wait_timeout_s)
        self.finalize()
        return self.report(pairs_per_s=rate, pairs=pairs, seconds=elapsed, encode_s=encode_s)

    def _wait_for_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [sc for sc in self.all_chunks() if not self.is_done(*sc)]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} chunks still missing, e.g. {missing[:3]}")
            time.sleep(2.0)

    def finalize(self) -> None:
        """Writes the dataset's metadata; dataset_info.json last, so TFDS sees the dataset
        only once everything it names is in place."""
        import tensorflow_datasets as tfds

        staging = os.path.join(self.dst, CHUNK_DIR, "metadata")
        os.makedirs(staging, exist_ok=True)
        template = tfds.core.ShardedFileTemplate(
            data_dir=staging, dataset_name=self.name, filetype_suffix=self.job.file_format
        )
        split_infos, per_split = [], {}
        for split in self.splits:
            summaries = [
                np.load(self.summary_path(split, c)) for c in range(self.num_chunks(split))
            ]
            lengths = [s["lengths"] for s in summaries]
            split_infos.append(
                tfds.core.SplitInfo(
                    name=split,
                    shard_lengths=[len(x) for x in lengths],
                    num_bytes=int(sum(int(s["num_bytes"]) for s in summaries)),
                    filename_template=template.replace(split=split),
                )
            )
            per_split[split] = {
                "codes": np.concatenate([s["codes"] for s in summaries]),
                "gaps": np.concatenate([s["gaps"] for s in summaries]),
                "lengths": np.concatenate(lengths),
                "actions": np.concatenate([s["actions"] for s in summaries])
                if self.spec.has_actions
                else None,
                "skipped": [x for s in summaries for x in json.loads(str(s["skipped"]))],
            }
        out_spec = dataclasses.replace(
            self.spec, name=f"{self.spec.name}_latent", latent_action_key=LABEL_KEY
        )
        # What tfds.folder_dataset.write_metadata does, minus its scan for data files
        # (they are not in the staging folder, and their lengths are known).
        from tensorflow_datasets.core import dataset_info, file_adapters, splits

        identity = dataset_info.DatasetIdentity(
            name=self.name,
            version=tfds.core.Version(str(self.builder.info.version)),
            data_dir=self.dst,
            module_name="",
        )
        ds_info = dataset_info.DatasetInfo(
            builder=identity,
            features=self.features,
            description=f"{self.builder.info.name} labelled with latent actions by "
            f"{self.encoder.checkpoint_path} at frame gap {self.frame_gap}",
        )
        ds_info.set_file_format(file_adapters.FileFormat(self.job.file_format))
        ds_info.set_splits(splits.SplitDict(split_infos))
        ds_info.write_to_directory(staging)
        labels = self._labels_record(per_split)
        _write_json_atomic(os.path.join(self.dst, LABELS_FILE), labels)
        _write_json_atomic(os.path.join(self.dst, SPEC_FILE), out_spec.to_json())
        shape = check_steps_spec(self.builder.info.features, self.spec, self.src).image_shape
        for split, d in per_split.items():
            stats = statistics_from_arrays(
                dataset=self.name,
                data_dir=self.dst,
                split=split,
                spec=out_spec.to_json(),
                lengths=d["lengths"],
                actions_NA=d["actions"],
                image_shape=shape,
                num_skipped=len(d["skipped"]),
            )
            stats["latent_action"] = labels["splits"][split]
            save_statistics(self.dst, stats, split)
        for name in sorted(os.listdir(staging)):
            if name != "dataset_info.json":
                os.replace(os.path.join(staging, name), os.path.join(self.dst, name))
        os.replace(
            os.path.join(staging, "dataset_info.json"), os.path.join(self.dst, "dataset_info.json")
        )
        counts = ", ".join(f"{s}: {len(d['lengths'])} episodes" for s, d in per_split.items())
        self._log(f"wrote {self.dst} ({counts})")

    def _labels_record(self, per_split: dict[str, dict[str, Any]]) -> dict[str, Any]:
        k, n_tok = self.encoder.num_codes, self.encoder.num_tokens
        splits = {}
        for split, d in per_split.items():
            codes = d["codes"]
            hist = np.stack([np.bincount(codes[:, p], minlength=k) for p in range(n_tok)])
            full = codes[d["gaps"] == self.frame_gap]
            splits[split] = {
                "num_episodes": len(d["lengths"]),
                "num_steps": len(codes),
                "num_full_gap_steps": len(full),
                "histogram_per_position": hist.tolist(),
                "distinct_actions": len({tuple(c) for c in codes.tolist()}),
                "skipped_episodes": d["skipped"],
            }
        return {
            "source": {"dir": self.src, "dataset": self.builder.info.name, "spec": self.job.spec},
            "quantizer": self.encoder.describe(),
            "frame_gap": self.frame_gap,
            "last_steps": "paired with the episode's last frame; latent_action_gap holds the "
            "gap actually spanned (0 for the last step)",
            "job": self.job.to_json(),
            "splits": splits,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def report(self, pairs_per_s: float | None, **extra: Any) -> dict[str, Any]:
        with open(os.path.join(self.dst, LABELS_FILE)) as f:
            labels = json.load(f)
        return {"dst": self.dst, "pairs_per_s": pairs_per_s, "labels": labels, **extra}

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"[label] {msg}", flush=True)


def _fault_point(where: str, chunk: int) -> None:
    """Dies like a killed process at a chosen point (LAPA_LABEL_FAULT=after_shard:2), so
    the tests can check resumption from every kind of interruption."""
    fault = os.environ.get("LAPA_LABEL_FAULT", "")
    if fault and fault == f"{where}:{chunk}":
        os._exit(137)


def _write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def histogram_table(labels: dict[str, Any], split: str) -> str:
    """The label histogram of one split as a small text table (rows: positions)."""
    rec = labels["splits"][split]
    hist = np.asarray(rec["histogram_per_position"])
    head = "position | " + " | ".join(f"code {k}" for k in range(hist.shape[1]))
    rows = [
        f"{p} | " + " | ".join(f"{v / max(hist[p].sum(), 1):.1%}" for v in hist[p])
        for p in range(len(hist))
    ]
    return "\n".join([head, *rows, f"distinct {len(hist)}-code actions: {rec['distinct_actions']}"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", required=True, help="TFDS/RLDS dataset folder (dataset_info.json)")
    p.add_argument("--spec", required=True, help="registered spec name or a .json/.py spec file")
    p.add_argument("--laq_workdir", required=True, help="the quantizer's training run folder")
    p.add_argument("--dst", required=True, help="folder of the labelled dataset")
    p.add_argument("--frame_gap", type=int, default=None, help="default: the quantizer's")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--laq_step", type=int, default=None, help="default: the latest checkpoint")
    p.add_argument("--splits", default="", help="comma-separated; default: all")
    p.add_argument("--chunk_episodes", type=int, default=32, help="episodes per output shard")
    p.add_argument("--save_vectors", action="store_true", help="also store the code vectors")
    p.add_argument("--file_format", default="array_record", choices=FILE_FORMATS)
    p.add_argument("--skip_bad_episodes", action="store_true", help="skip and record them")
    p.add_argument("--process_index", type=int, default=None)
    p.add_argument("--process_count", type=int, default=None)
    p.add_argument(
        "--cpu_devices",
        type=int,
        default=os.cpu_count() or 1,
        help="split a CPU host into N devices (data parallel over cores; default: one per "
        "core; no effect on accelerators)",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.cpu_devices:
        import jax

        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    if args.process_index is None or args.process_count is None:
        import jax

        args.process_index, args.process_count = jax.process_index(), jax.process_count()
    labeller = Labeller(
        args.src,
        args.spec,
        args.laq_workdir,
        args.dst,
        frame_gap=args.frame_gap,
        batch_size=args.batch_size,
        laq_step=args.laq_step,
        splits=[s for s in args.splits.split(",") if s] or None,
        chunk_episodes=args.chunk_episodes,
        save_vectors=args.save_vectors,
        file_format=args.file_format,
        skip_bad_episodes=args.skip_bad_episodes,
        process_index=args.process_index,
        process_count=args.process_count,
    )
    out = labeller.run()
    if "labels" in out:
        split = labeller.splits[0]
        print(f"label histogram ({split}):\n{histogram_table(out['labels'], split)}")
    return out


if __name__ == "__main__":
    main()
