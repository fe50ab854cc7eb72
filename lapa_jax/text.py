"""Instructions as token ids: a sentencepiece model and the stage-2/3 prompt.

Any sentencepiece `.model` file works (e.g. Gemma's or LLaMA's tokenizer, if it is on
disk); `data_pipelines.train_tokenizer` trains a small one on a dataset's instructions.
The prompt is the paper's: "What action should the robot take to {instruction}?".
"""

from __future__ import annotations

import os

import numpy as np

PROMPT = "What action should the robot take to {instruction}?"


def prompt_text(instruction: str) -> str:
    instruction = instruction.strip().rstrip(".?!")
    if instruction[:1].isupper() and not instruction[:2].isupper():
        instruction = instruction[0].lower() + instruction[1:]
    return PROMPT.format(instruction=instruction)


class Tokenizer:
    """Wraps a sentencepiece model; pads with its pad id (or 0 when it has none)."""

    def __init__(self, model_path: str):
        import sentencepiece as spm

        if not os.path.isfile(model_path):
            raise FileNotFoundError(
                f"tokenizer model {model_path} does not exist; train one with "
                "python -m data_pipelines.train_tokenizer, or pass an existing .model file"
            )
        self.path = os.path.abspath(model_path)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(model_path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{model_path} is not a sentencepiece model: {e}") from e
        self.vocab_size = int(self.sp.GetPieceSize())
        self.pad_id = max(int(self.sp.pad_id()), 0)
        self.bos_id = int(self.sp.bos_id())

    def encode(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(text))

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def prompt(self, instruction: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """The prompt's ids, BOS first when the model has one, cut or padded to max_len:
        (ids int32 [max_len], mask bool [max_len]). Cutting keeps the start."""
        ids = self.encode(prompt_text(instruction))
        if self.bos_id >= 0:
            ids = [self.bos_id, *ids]
        ids = ids[:max_len]
        out = np.full((max_len,), self.pad_id, np.int32)
        out[: len(ids)] = ids
        mask = np.zeros((max_len,), bool)
        mask[: len(ids)] = True
        return out, mask
