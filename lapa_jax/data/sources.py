"""Random access to the episodes of one RLDS/TFDS dataset, read through a spec.

Reads ArrayRecord datasets with `as_data_source` (no TensorFlow import, so a process
that renders MuJoCo can read data too). Images are kept encoded until a step is asked
for, so reading a frame pair decodes two images, not a whole episode.

An index pass at open time reads every episode's length and actions once (images are
not decoded): it finds empty, one-step and non-finite-action episodes up front, so a
training batch never holds a silently wrong example. The index is cached next to the
data when the folder is writable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from lapa_jax.data.specs import DatasetSpec, get_spec

log = logging.getLogger(__name__)

INDEX_VERSION = 1
# What data_pipelines.label_latent_actions writes beside a labelled dataset: which
# quantizer labelled it, with its layout (num_latent_tokens, num_codes).
LABELS_FILE = "lapa_labels.json"


class DataError(ValueError):
    """Bad or mismatching data; the message names the dataset, episode and key."""


def _get_path(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("/"):
        node = node[part]
    return node


def _flat_keys(feature: Any, prefix: str = "") -> list[str]:
    keys = []
    for k in feature.keys():  # noqa: SIM118 (a FeaturesDict, not a dict)
        sub = feature[k]
        path = f"{prefix}{k}"
        if hasattr(sub, "keys") and type(sub).__name__ == "FeaturesDict":
            keys.extend(_flat_keys(sub, path + "/"))
        else:
            keys.append(path)
    return keys


def decode_image(data: Any, where: str) -> np.ndarray:
    """PNG/JPEG bytes or an array -> uint8 [H, W, 3]."""
    if isinstance(data, bytes | np.bytes_):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                img = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im)
        except Exception as e:  # PIL raises many types for corrupt data
            raise DataError(f"{where}: cannot decode image: {e}") from e
    else:
        img = np.asarray(data)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise DataError(f"{where}: image has shape {img.shape}, expected [H, W, 3]")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.dtype != np.uint8:
        raise DataError(f"{where}: image dtype is {img.dtype}, expected uint8")
    return img


def _text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


@dataclasses.dataclass(frozen=True)
class StepsInfo:
    image_shape: tuple[int | None, ...]
    image_is_encoded: bool
    action_dim: int


def check_steps_spec(features: Any, spec: DatasetSpec, where: str) -> StepsInfo:
    """Checks that a dataset's step features hold what the spec names, with usable types
    and shapes; a mismatch raises a DataError listing the keys that are there."""
    if "steps" not in features:
        raise DataError(f"{where}: not an RLDS dataset (no 'steps' feature)")
    steps = features["steps"].feature
    available = _flat_keys(steps)
    where = f"{where} with spec {spec.name!r}"

    def feature(key: str, role: str) -> Any:
        try:
            return _get_path(steps, key)
        except (KeyError, TypeError):
            raise DataError(
                f"{where}: {role} key {key!r} is not in the steps; available keys: {available}"
            ) from None

    image = feature(spec.image_key, "image")
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[-1] not in (1, 3, None):
        raise DataError(
            f"{where}: image key {spec.image_key!r} has shape {shape}, expected [H, W, 3]"
        )
    if np.dtype(image.np_dtype) != np.uint8:
        raise DataError(
            f"{where}: image key {spec.image_key!r} has dtype {image.np_dtype}, expected uint8"
        )
    if spec.instruction_key is not None:
        instr = feature(spec.instruction_key, "instruction")
        if type(instr).__name__ != "Text" and np.dtype(instr.np_dtype).kind not in "SUO":
            raise DataError(f"{where}: instruction key {spec.instruction_key!r} is not text")
    action_dim = 0
    for key in spec.action_keys or ():
        act = feature(key, "action")
        kind = np.dtype(act.np_dtype).kind
        if kind not in "fiub":
            raise DataError(f"{where}: action key {key!r} has non-numeric dtype {act.np_dtype}")
        act_shape = tuple(act.shape)
        if len(act_shape) > 1 or None in act_shape:
            raise DataError(
                f"{where}: action key {key!r} has shape {act_shape}, expected [] or [n]"
            )
        action_dim += int(np.prod(act_shape)) if act_shape else 1
    for key, role in ((spec.state_key, "state"), (spec.latent_action_key, "latent action")):
        if key is not None:
            feature(key, role)
    return StepsInfo(shape, type(image).__name__ == "Image", action_dim)


def image_feature_paths(feature: Any, prefix: str = "") -> list[str]:
    """'/'-paths of every encoded Image feature under a FeaturesDict (e.g. the steps)."""
    paths = []
    for k in feature.keys():  # noqa: SIM118 (a FeaturesDict, not a dict)
        sub = feature[k]
        if type(sub).__name__ == "FeaturesDict":
            paths.extend(image_feature_paths(sub, f"{prefix}{k}/"))
        elif type(sub).__name__ == "Image":
            paths.append(f"{prefix}{k}")
    return paths


def skip_decoding(paths: list[str]) -> dict[str, Any]:
    """A TFDS `decoders` tree that keeps the images at `paths` (under steps) encoded."""
    import tensorflow_datasets as tfds

    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tfds.decode.SkipDecoding()
    return {"steps": tree}


class EpisodeSource:
    """Episodes of one split of one dataset; episode i is the i-th valid episode."""

    def __init__(
        self,
        data_dir: str,
        spec: DatasetSpec | str,
        split: str = "train",
        skip_bad_episodes: bool | None = None,
        use_index_cache: bool = True,
    ):
        self.data_dir = os.path.abspath(data_dir)
        self.spec = get_spec(spec)
        self.split = split
        self.skip_bad_episodes = (
            self.spec.skip_bad_episodes if skip_bad_episodes is None else skip_bad_episodes
        )
        self._source: Any = None
        self._lock = threading.Lock()
        builder = self._builder()
        self.dataset_name = builder.info.name
        self._check_format(builder)
        self._check_spec(builder)
        self.num_records = builder.info.splits[split].num_examples
        self._load_index(use_index_cache)

    # ---- opening -----------------------------------------------------------------

    def _builder(self) -> Any:
        import tensorflow_datasets as tfds

        if not os.path.isfile(os.path.join(self.data_dir, "dataset_info.json")):
            raise FileNotFoundError(
                f"{self.data_dir} is not a TFDS dataset folder (no dataset_info.json); pass the "
                "folder that holds dataset_info.json and the record files"
            )
        return tfds.builder_from_directory(self.data_dir)

    def _where(
        self, record: int | None = None, key: str | None = None, step: int | None = None
    ) -> str:
        parts = [
            f"dataset {getattr(self, 'dataset_name', '?')!r} ({self.data_dir}) split {self.split!r}"
        ]
        if record is not None:
            parts.append(f"episode {record}")
        if step is not None:
            parts.append(f"step {step}")
        if key is not None:
            parts.append(f"key {key!r}")
        return ", ".join(parts)

    def _check_format(self, builder: Any) -> None:
        fmt = str(getattr(builder.info.file_format, "value", builder.info.file_format))
        if fmt != "array_record":
            raise DataError(
                f"{self._where()}: stored as {fmt!r}, but random access needs 'array_record'. "
                "Convert it once with: python -m data_pipelines.convert_to_array_record "
                f"--src {self.data_dir} --dst DIR"
            )
        if self.split not in builder.info.splits:
            raise DataError(f"{self._where()}: no such split; splits: {list(builder.info.splits)}")

    def _check_spec(self, builder: Any) -> None:
        info = check_steps_spec(builder.info.features, self.spec, self._where())
        self._image_is_encoded = info.image_is_encoded
        self.image_shape = info.image_shape
        self.action_dim = info.action_dim

    @property
    def source(self) -> Any:
        """The TFDS data source, opened lazily so this object pickles into workers."""
        if self._source is None:
            with self._lock:  # Grain reads from several threads
                if self._source is None:
                    decoders = None
                    if self._image_is_encoded:
                        decoders = skip_decoding([self.spec.image_key])
                    self._source = self._builder().as_data_source(self.split, decoders=decoders)
        return self._source

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_source"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---- the index ---------------------------------------------------------------

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.spec.to_json(), sort_keys=True).encode())
        h.update(f"{INDEX_VERSION}:{self.split}:{self.num_records}".encode())
        for name in sorted(os.listdir(self.data_dir)):
            if f"-{self.split}." in name:
                st = os.stat(os.path.join(self.data_dir, name))
                h.update(f"{name}:{st.st_size}:{int(st.st_mtime)}".encode())
        return h.hexdigest()[:16]

    def _index_path(self) -> str:
        return os.path.join(self.data_dir, f"lapa_index_{self.split}_{self.spec.name}.json")

    def _load_index(self, use_cache: bool) -> None:
        fp = self._fingerprint()
        path = self._index_path()
        index = None
        if use_cache and os.path.isfile(path):
            try:
                with open(path) as f:
                    cached = json.load(f)
                if cached.get("fingerprint") == fp:
                    index = cached
            except (OSError, json.JSONDecodeError):
                index = None
        if index is None:
            index = self._build_index()
            index["fingerprint"] = fp
            if use_cache:
                try:
                    tmp = f"{path}.tmp{os.getpid()}"
                    with open(tmp, "w") as f:
                        json.dump(index, f)
                    os.replace(tmp, path)
                except OSError:
                    log.info("Could not cache the episode index in %s (read-only?)", self.data_dir)
        skipped = index["skipped"]
        if skipped and not self.skip_bad_episodes:
            first = skipped[0]
            raise DataError(
                f"{first['error']} ({len(skipped)} bad episodes in all; set the spec's "
                "skip_bad_episodes to skip and count them)"
            )
        self.records = np.asarray(index["records"], np.int64)
        self.lengths = np.asarray(index["lengths"], np.int64)
        self.skipped: list[dict[str, Any]] = skipped
        if len(self.records) == 0:
            raise DataError(f"{self._where()}: no usable episodes ({len(skipped)} skipped)")
        if skipped:
            log.warning("%s: skipped %d bad episodes", self._where(), len(skipped))

    def _build_index(self) -> dict[str, Any]:
        records, lengths, skipped = [], [], []
        for r in range(self.num_records):
            try:
                steps = self.source[r]["steps"]
            except Exception as e:  # a corrupt record: name it
                error = f"{self._where(r)}: unreadable record: {type(e).__name__}: {e}"
                skipped.append({"record": r, "error": error})
                continue
            n = len(steps)
            error = None
            if n == 0:
                error = f"{self._where(r)}: empty episode (0 steps)"
            elif n == 1:
                error = f"{self._where(r)}: one-step episode (a frame pair needs 2 steps)"
            elif self.spec.action_keys is not None:
                try:
                    self._episode_actions(steps, r)
                except DataError as e:
                    error = str(e)
            if error is not None:
                skipped.append({"record": r, "error": error})
                continue
            records.append(r)
            lengths.append(n)
        return {"records": records, "lengths": lengths, "skipped": skipped}

    # ---- reading -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())

    def steps(self, episode: int) -> Any:
        return self.source[int(self.records[episode])]["steps"]

    def episode_record(self, episode: int) -> dict[str, Any]:
        return self.source[int(self.records[episode])]

    def _flat_action(self, step: Mapping[str, Any], record: int, t: int) -> np.ndarray:
        parts = []
        for key in self.spec.action_keys or ():
            value = np.asarray(_get_path(step, key), dtype=np.float32).reshape(-1)
            if not np.all(np.isfinite(value)):
                raise DataError(
                    f"{self._where(record, key, t)}: non-finite action values {value.tolist()}"
                )
            parts.append(value)
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    def _episode_actions(self, steps: Any, record: int) -> np.ndarray:
        return np.stack([self._flat_action(steps[t], record, t) for t in range(len(steps))])

    def image(self, episode: int, t: int, steps: Any = None) -> np.ndarray:
        steps = self.steps(episode) if steps is None else steps
        record = int(self.records[episode])
        return decode_image(
            _get_path(steps[t], self.spec.image_key),
            self._where(record, self.spec.image_key, t),
        )

    def instruction(self, episode: int, t: int = 0, steps: Any = None) -> str:
        if self.spec.instruction_key is None:
            return self.spec.default_instruction
        steps = self.steps(episode) if steps is None else steps
        return _text(_get_path(steps[t], self.spec.instruction_key))

    def action(self, episode: int, t: int, steps: Any = None) -> np.ndarray:
        if self.spec.action_keys is None:
            raise DataError(f"{self._where()}: spec {self.spec.name!r} has no action keys")
        steps = self.steps(episode) if steps is None else steps
        return self._flat_action(steps[t], int(self.records[episode]), t)

    def actions(self, episode: int) -> np.ndarray:
        """All flat actions of an episode, [L, A] float32."""
        if self.spec.action_keys is None:
            raise DataError(f"{self._where()}: spec {self.spec.name!r} has no action keys")
        return self._episode_actions(self.steps(episode), int(self.records[episode]))

    def state(self, episode: int, t: int, steps: Any = None) -> np.ndarray:
        if self.spec.state_key is None:
            raise DataError(f"{self._where()}: spec {self.spec.name!r} has no state key")
        steps = self.steps(episode) if steps is None else steps
        return np.asarray(_get_path(steps[t], self.spec.state_key), np.float32)

    def latent_action(self, episode: int, t: int, steps: Any = None) -> np.ndarray:
        if self.spec.latent_action_key is None:
            raise DataError(f"{self._where()}: spec {self.spec.name!r} has no latent action key")
        steps = self.steps(episode) if steps is None else steps
        return np.asarray(_get_path(steps[t], self.spec.latent_action_key), np.int32)

    def episode_metadata(self, episode: int) -> dict[str, Any]:
        meta = self.episode_record(episode).get("episode_metadata", {})
        return {k: _text(v) if isinstance(v, bytes | np.bytes_) else v for k, v in meta.items()}
