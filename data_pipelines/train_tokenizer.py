"""Train a sentencepiece tokenizer on the instructions of one or more datasets.

    python -m data_pipelines.train_tokenizer --data data/metaworld --spec metaworld \
        --out data/tokenizer.model [--vocab_size 512] [--data other --spec other_spec]

Reads every episode's instruction (no images) from every split of each dataset, adds
the prompt template's words, and trains a BPE model with pad=0, unk=1, bos=2, eos=3 and
byte fallback (a character never seen in training still encodes, as its UTF-8 bytes).
A small corpus cannot fill a large vocabulary; the model then keeps fewer pieces
(`hard_vocab_limit=False`) and says how many. Any existing sentencepiece `.model`
file can be used instead of one trained here.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence

from lapa_jax.data.sources import EpisodeSource
from lapa_jax.text import PROMPT, Tokenizer, prompt_text

MIN_VOCAB = 300


def instructions(data_dir: str, spec: str) -> list[str]:
    import tensorflow_datasets as tfds

    splits = list(tfds.builder_from_directory(data_dir).info.splits)
    out = []
    for split in splits:
        src = EpisodeSource(data_dir, spec, split)
        out.extend(src.instruction(e) for e in range(len(src)))
    return out


def train(data: Sequence[str], specs: Sequence[str], out: str, vocab_size: int = 512) -> Tokenizer:
    import sentencepiece as spm

    if len(data) != len(specs) or not data:
        raise ValueError("give one --spec per --data (and at least one)")
    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"vocab_size must be >= {MIN_VOCAB} (256 byte pieces, so that any text, even with "
            f"characters never seen in training, encodes without unknowns), got {vocab_size}"
        )
    texts = [t for d, s in zip(data, specs, strict=True) for t in instructions(d, s)]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"no instructions in {list(data)}: nothing to train a tokenizer on")
    corpus = [prompt_text(t) for t in texts] + [PROMPT.format(instruction="")]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="bpe",
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        character_coverage=1.0,
        byte_fallback=True,
        minloglevel=2,
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, out)
    tok = Tokenizer(out)
    print(
        f"trained a {tok.vocab_size}-piece tokenizer on {len(texts)} instructions "
        f"({len(set(texts))} distinct) -> {out}"
    )
    return tok


def main(argv: Sequence[str] | None = None) -> Tokenizer:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", action="append", required=True, help="dataset folder (repeatable)")
    p.add_argument("--spec", action="append", required=True, help="its spec (repeatable)")
    p.add_argument("--out", required=True, help="the .model file to write")
    p.add_argument("--vocab_size", type=int, default=512)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    return train(a.data, a.spec, a.out, a.vocab_size)


if __name__ == "__main__":
    main()
