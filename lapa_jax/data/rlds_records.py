"""Raw RLDS episode records in and out, in either TFDS file format.

Reading keeps the images of the steps encoded (so a converter can copy them byte for
byte) and yields episodes in stored order from array_record (random access) or
tfrecord (a sequential read); writing appends serialized examples to one shard file.
Both import TensorFlow or TFDS lazily; never use them in a process that renders.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lapa_jax.data.sources import DataError, skip_decoding


class EpisodeReader:
    """Episodes of one split in stored order, images left encoded; both file formats."""

    def __init__(self, builder: Any, split: str, image_paths: list[str]):
        self.builder = builder
        self.split = split
        self.image_paths = image_paths
        self.file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
        self.num_episodes = int(builder.info.splits[split].num_examples)
        self._source: Any = None

    def episodes(self, start: int, stop: int) -> Iterator[tuple[int, dict[str, Any]]]:
        decoders = skip_decoding(self.image_paths) if self.image_paths else None
        if self.file_format == "array_record":
            if self._source is None:
                self._source = self.builder.as_data_source(self.split, decoders=decoders)
            for i in range(start, stop):
                try:
                    record = self._source[i]
                    steps = [dict(s) for s in record["steps"]]
                except Exception as e:  # a corrupt record: name it
                    raise DataError(
                        f"{self._where(i)}: unreadable record: {type(e).__name__}: {e}"
                    ) from e
                yield i, {**{k: v for k, v in record.items() if k != "steps"}, "steps": steps}
            return
        import tensorflow as tf
        import tensorflow_datasets as tfds

        ds = self.builder.as_dataset(
            self.split,
            decoders=decoders,
            shuffle_files=False,
            read_config=tfds.ReadConfig(interleave_cycle_length=1),
        ).skip(start)
        it = iter(ds)
        for i in range(start, stop):
            try:
                record = next(it)
                steps = list(tfds.as_numpy(record["steps"]))
                rest = tfds.as_numpy({k: v for k, v in record.items() if k != "steps"})
            except (tf.errors.OpError, StopIteration) as e:
                raise DataError(
                    f"{self._where(i)}: unreadable record: {type(e).__name__}: {e}"
                ) from e
            yield i, {**rest, "steps": steps}

    def _where(self, i: int) -> str:
        return f"{self.builder.data_dir} split {self.split!r} episode {i}"


class RecordWriter:
    def __init__(self, path: str, file_format: str):
        if file_format == "array_record":
            from array_record.python.array_record_module import ArrayRecordWriter

            self._w = ArrayRecordWriter(path, "group_size:1")
        else:
            import tensorflow as tf

            self._w = tf.io.TFRecordWriter(path)

    def write(self, record: bytes) -> None:
        self._w.write(record)

    def close(self) -> None:
        self._w.close()
