"""Convert a TFRecord TFDS dataset (how Open-X ships) to ArrayRecord, once.

    python -m data_pipelines.convert_to_array_record --src DIR --dst DIR

lapa-jax reads datasets by random access (Grain wants `as_data_source`), which needs
ArrayRecord files; TFRecord files only stream. Rather than keep a second, streaming
read path with different shuffling and checkpoint semantics, we convert once. The
serialized examples are copied byte for byte (nothing is decoded or re-encoded), each
shard's record count is checked against dataset_info.json, and the result appears at
DST only when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from collections.abc import Sequence

from lapa_jax.data.rlds_writer import check_destination

SKIP_FILES = ("lapa_index_",)  # derived files that name the source's shards


def _shard_lengths(info: dict) -> dict[str, list[int]]:
    return {s["name"]: [int(n) for n in s.get("shardLengths", [])] for s in info.get("splits", [])}


def convert(src: str, dst: str, overwrite: bool = False) -> str:
    import tensorflow as tf
    from array_record.python.array_record_module import ArrayRecordWriter

    src = os.path.abspath(src)
    info_path = os.path.join(src, "dataset_info.json")
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f"{src} is not a TFDS dataset folder (no dataset_info.json)")
    with open(info_path) as f:
        info = json.load(f)
    fmt = info.get("fileFormat", "tfrecord")
    if fmt == "array_record":
        raise ValueError(f"{src} is already stored as array_record")
    if fmt != "tfrecord":
        raise ValueError(f"{src}: cannot convert file format {fmt!r}; only tfrecord")
    dst = check_destination(dst, overwrite)
    name = info["name"]
    expected = _shard_lengths(info)
    staging = os.path.join(
        os.path.dirname(dst), f".{os.path.basename(dst)}.staging-{uuid.uuid4().hex[:8]}"
    )
    os.makedirs(staging)
    try:
        converted = 0
        for fname in sorted(os.listdir(src)):
            path = os.path.join(src, fname)
            if fname.startswith(SKIP_FILES) or not os.path.isfile(path):
                continue
            if ".tfrecord-" not in fname:
                shutil.copy2(path, os.path.join(staging, fname))
                continue
            # e.g. bridge-train.tfrecord-00003-of-00016
            prefix, shard = fname.split(".tfrecord-")
            split = prefix[len(name) + 1 :] if prefix.startswith(name + "-") else prefix
            out_path = os.path.join(staging, f"{prefix}.array_record-{shard}")
            writer = ArrayRecordWriter(out_path, "group_size:1")
            count = 0
            try:
                for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
                    writer.write(record)
                    count += 1
            except tf.errors.DataLossError as e:
                raise ValueError(f"{path}: truncated or corrupt TFRecord file ({e})") from e
            finally:
                writer.close()
            shard_index = int(shard.split("-of-")[0])
            lengths = expected.get(split)
            if lengths and shard_index < len(lengths) and lengths[shard_index] != count:
                raise ValueError(
                    f"{path}: read {count} records, dataset_info.json says {lengths[shard_index]}"
                )
            converted += 1
        if converted == 0:
            raise ValueError(f"{src}: no .tfrecord-* shards found")
        info["fileFormat"] = "array_record"
        with open(os.path.join(staging, "dataset_info.json"), "w") as f:
            json.dump(info, f, indent=2)
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.rename(staging, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"Converted {converted} shards of {name!r} to array_record at {dst}")
    return dst


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", required=True, help="TFDS dataset folder stored as tfrecord")
    p.add_argument("--dst", required=True, help="folder to create (array_record)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return convert(args.src, args.dst, args.overwrite)


if __name__ == "__main__":
    main()
