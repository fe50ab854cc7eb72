"""Write RLDS episodes as a TFDS dataset folder, atomically.

The dataset is built in a staging folder beside the destination and renamed into
place only when complete, so a reader never sees a half-written dataset and an
interrupted write leaves any existing dataset untouched until the final swap.
Imports TensorFlow (through TFDS): never call this from a process that renders.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

FILE_FORMATS = ("array_record", "tfrecord")


def check_destination(out: str, overwrite: bool) -> str:
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    return out


def write_rlds(
    out: str,
    name: str,
    version: str,
    features: Any,
    split_examples: Mapping[str, Iterable[tuple[str, dict[str, Any]]]],
    file_format: str = "array_record",
    description: str = "",
    overwrite: bool = False,
    extra_files: Mapping[str, str | Callable[[], str]] | None = None,
    verbose: bool = True,
) -> str:
    """Writes splits of (key, example) pairs, in the order given, to the folder `out`.

    `extra_files` maps file names to text (or a function returning it, called once all
    examples are written) placed in the dataset folder before the swap, e.g.
    provenance JSON. Returns the absolute dataset path.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds

    if not verbose:
        tfds.disable_progress_bar()
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
    if not split_examples:
        raise ValueError("no splits to write")
    out = check_destination(out, overwrite)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(out)}.staging-{uuid.uuid4().hex[:8]}")
    try:
        tfds.dataset_builders.store_as_tfds_dataset(
            name=name,
            version=version,
            features=features,
            split_datasets=dict(split_examples),
            data_dir=staging,
            description=description,
            file_format=file_format,
            disable_shuffling=True,
        )
        built = os.path.join(staging, name, version)
        for fname, text in (extra_files or {}).items():
            with open(os.path.join(built, fname), "w") as f:
                f.write(text() if callable(text) else text)
        if os.path.exists(out):
            trash = f"{staging}.old"
            os.rename(out, trash)
            os.rename(built, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(built, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
