"""A finetuned stage-3 run as a policy: raw camera image and instruction in, action out.

    policy = Policy.load("runs/finetune")
    action = policy.act(image_HWC_uint8, "open the drawer")        # np.ndarray [A]
    actions = policy.act_batch(images, instructions)                 # [N, A]

It carries its own preprocessing (centre crop or pad to square, resize: the training
pipeline's), the tokenizer and prompt, and the action head's state saved with the run
(bins, or the statistics that un-normalize a chunk), so a caller passes any-size RGB
images and strings. Decoding is jitted for a fixed batch shape (smaller batches are
padded); the binned head decodes greedily by default, sampled with a temperature.
A chunked run predicts K actions per call (`predict_batch`); `act` returns the first,
and `ChunkExecutor` runs whole chunks (receding horizon or temporal ensembling).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from lapa_jax.data.pipelines import square_image
from lapa_jax.models.vlm import VLM


class Policy:
    def __init__(
        self,
        workdir: str,
        step: int | None = None,
        batch_size: int = 8,
        from_adapter: bool = False,
    ):
        from lapa_jax.evaluate_laq import load_config, load_params
        from lapa_jax.tasks.action_finetune import ActionFinetuneTask

        self.workdir = os.path.abspath(workdir)
        config = load_config(workdir)
        if config.get("task") != "action_finetune":
            raise ValueError(f"{workdir} is a {config.get('task')!r} run, not a finetuned policy")
        if not (config.get("action_bins") or config.get("action_stats")):
            raise ValueError(
                f"{workdir}/config.json holds no fitted action head (action_bins or "
                "action_stats): not a finished run"
            )
        if from_adapter:  # the base rebuilt, the LoRA adapter on top (lapa_jax.lora)
            from lapa_jax.lora import ADAPTER_DIR, load_adapter

            self.params, config, self.step = load_adapter(os.path.join(workdir, ADAPTER_DIR))
        config.init = {"vision_from": "", "language_from": "", "step": -1}
        config.init_from = ""
        self.config = config
        self.task = ActionFinetuneTask(config)
        self.head = self.task.head
        if not from_adapter:
            self.params, self.step = load_params(workdir, config, step)
        self.params = jax.tree.map(
            lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x),
            self.params,
        )
        cfg = self.task.model_cfg
        self.image_size, self.resize_mode = cfg.image_size, str(config.data.resize_mode)
        self.max_text_len = cfg.max_text_len
        self.batch_size = batch_size
        model = self.task.model

        def decode(params: Any, img: Any, txt: Any, mask: Any, rng: Any, temperature: Any) -> Any:
            return model.apply(
                {"params": params}, img, txt, mask, rng, temperature, method=VLM.decode
            )

        self._greedy = jax.jit(lambda p, i, t, m: decode(p, i, t, m, None, 0.0))
        self._sample = jax.jit(decode, static_argnums=(5,))
        self._prompts: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def load(
        cls, workdir: str, step: int | None = None, batch_size: int = 8, from_adapter: bool = False
    ) -> Policy:
        return cls(workdir, step, batch_size, from_adapter)

    def describe(self) -> dict[str, Any]:
        return {
            "workdir": self.workdir,
            "step": int(self.step),
            "image_size": self.image_size,
            "head": self.head.name,
            "action_dim": self.head.action_dim,
            "chunk_size": self.head.chunk_size,
            **({"bins": self.head.bins.max_bins} if self.head.name == "binned" else {}),
        }

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        img = np.asarray(image)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, -1)
        if img.ndim != 3 or img.shape[-1] not in (3, 4) or min(img.shape[:2]) < 1:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
        if img.dtype != np.uint8:
            if img.dtype.kind == "f" and img.size and img.min() >= 0.0 and img.max() <= 1.0:
                img = (img * 255.0).round().astype(np.uint8)
            else:
                raise ValueError(f"expected a uint8 image (or floats in [0, 1]), got {img.dtype}")
        img = np.ascontiguousarray(img[..., :3])
        return square_image(img, self.image_size, self.resize_mode).astype(np.float32) / 255.0

    def _prompt(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("the instruction must be a non-empty string")
        if instruction not in self._prompts:
            self._prompts[instruction] = self.task.tokenizer.prompt(instruction, self.max_text_len)
        return self._prompts[instruction]

    def predict_batch(
        self,
        images: list[np.ndarray],
        instructions: list[str],
        temperature: float = 0.0,
        seed: int = 0,
    ) -> np.ndarray:
        """Action chunks float32 [N, K, A] (K = chunk_size) for N images and instructions."""
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        if temperature > 0 and self.head.name != "binned":
            raise ValueError(f"the {self.head.name} head is deterministic: temperature must be 0")
        out = []
        for start in range(0, len(images), self.batch_size):
            imgs = [self.preprocess(x) for x in images[start : start + self.batch_size]]
            prompts = [self._prompt(t) for t in instructions[start : start + self.batch_size]]
            n = len(imgs)
            imgs += [imgs[-1]] * (self.batch_size - n)
            prompts += [prompts[-1]] * (self.batch_size - n)
            img = np.stack(imgs)
            txt = np.stack([p[0] for p in prompts])
            mask = np.stack([p[1] for p in prompts])
            if temperature > 0:
                rng = jax.random.fold_in(jax.random.key(seed), start)
                raw = self._sample(self.params, img, txt, mask, rng, float(temperature))
            else:
                raw = self._greedy(self.params, img, txt, mask)  # tokens or a chunk
            out.append(self.head.to_actions(np.asarray(jax.device_get(raw))[:n]))
        if not out:
            return np.zeros((0, self.chunk_size, self.head.action_dim), np.float32)
        return np.concatenate(out)

    def act_batch(
        self,
        images: list[np.ndarray],
        instructions: list[str],
        temperature: float = 0.0,
        seed: int = 0,
    ) -> np.ndarray:
        """The next action float32 [N, A] for N images and instructions."""
        return self.predict_batch(images, instructions, temperature, seed)[:, 0]

    def act(self, image: np.ndarray, instruction: str, temperature: float = 0.0) -> np.ndarray:
        return self.act_batch([image], [instruction], temperature)[0]

    @property
    def chunk_size(self) -> int:
        """Actions predicted per call (1 for the binned head)."""
        return self.head.chunk_size


EXECUTION_MODES = ("receding", "ensemble")


class ChunkExecutor:
    """Turns predicted action chunks into one action per control step.

    - receding: run the first `execute_steps` actions of a chunk, then predict anew;
    - ensemble (ACT's temporal ensembling): predict every step, and execute the weighted
      mean of every stored chunk's entry for the current step, weight exp(-decay * i)
      with i = 0 for the oldest prediction.
    A chunk of one action under either mode is plain closed-loop control.
    """

    def __init__(
        self, chunk_size: int, mode: str = "receding", execute_steps: int = 0, decay: float = 0.01
    ):
        if mode not in EXECUTION_MODES:
            raise ValueError(f"execution mode must be one of {EXECUTION_MODES}, got {mode!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        execute_steps = execute_steps or chunk_size
        if not 1 <= execute_steps <= chunk_size:
            raise ValueError(f"execute_steps must be in 1..{chunk_size}, got {execute_steps}")
        if not np.isfinite(decay) or decay < 0:
            raise ValueError(f"decay must be finite and >= 0, got {decay}")
        self.chunk_size, self.mode = chunk_size, mode
        self.execute_steps, self.decay = execute_steps, decay
        self.reset()

    def reset(self) -> None:
        self.t = 0
        self._queue: list[np.ndarray] = []
        self._chunks: list[tuple[int, np.ndarray]] = []  # (step predicted at, [K, A])

    def needs_prediction(self) -> bool:
        return self.mode == "ensemble" or not self._queue

    def add(self, chunk_KA: np.ndarray) -> None:
        chunk = np.asarray(chunk_KA, np.float32)
        if chunk.ndim != 2 or chunk.shape[0] != self.chunk_size:
            raise ValueError(f"expected a chunk [{self.chunk_size}, A], got shape {chunk.shape}")
        if self.mode == "receding":
            self._queue = list(chunk[: self.execute_steps])
        else:
            self._chunks.append((self.t, chunk))
            self._chunks = [(t0, c) for t0, c in self._chunks if self.t - t0 < self.chunk_size]

    def next_action(self) -> np.ndarray:
        if self.mode == "receding":
            if not self._queue:
                raise RuntimeError("no action left: add a predicted chunk first")
            action = self._queue.pop(0)
        else:
            live = [(t0, c) for t0, c in self._chunks if 0 <= self.t - t0 < self.chunk_size]
            if not live:
                raise RuntimeError("no chunk covers this step: add a predicted chunk first")
            w = np.exp(-self.decay * np.arange(len(live)))  # oldest first
            entries = np.stack([c[self.t - t0] for t0, c in live])
            action = (w[:, None] * entries).sum(0) / w.sum()
        self.t += 1
        return np.asarray(action, np.float32)
