"""Small synthetic RLDS datasets in the layouts seen in the wild, for tests.

Each frame encodes where it came from: channel 0 holds the episode index, channel 1
the step index, so a test can tell exactly which frame a pipeline returned. Writing
imports TensorFlow, so tests call `write_in_subprocess` and keep TF out of the test
process (where MuJoCo may render).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = ("bridge", "oxe_bridge", "bad_rank", "video")


def frame(episode: int, t: int, h: int, w: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = episode
    img[..., 1] = t
    img[:, : w // 2, 2] = 200  # left half bright: shows how a non-square image was cropped
    return img


def action(episode: int, t: int, dim: int = 7) -> np.ndarray:
    return (np.arange(dim, dtype=np.float32) + 10.0 * episode + 0.1 * t).astype(np.float32)


def _features(layout: str, h: int, w: int) -> Any:
    import tensorflow_datasets as tfds

    f = tfds.features
    common = {
        "reward": f.Scalar(dtype=np.float32),
        "is_first": f.Scalar(dtype=np.bool_),
        "is_last": f.Scalar(dtype=np.bool_),
        "is_terminal": f.Scalar(dtype=np.bool_),
    }
    if layout == "bridge":
        step = {
            "observation": {
                "image_0": f.Image(shape=(h, w, 3), encoding_format="png"),
                "state": f.Tensor(shape=(7,), dtype=np.float32),
            },
            "action": f.Tensor(shape=(7,), dtype=np.float32),
            "language_instruction": f.Text(),
        }
    elif layout == "oxe_bridge":
        step = {
            "observation": {
                "image": f.Image(shape=(h, w, 3), encoding_format="png"),
                "natural_language_instruction": f.Text(),
                "state": f.Tensor(shape=(7,), dtype=np.float32),
            },
            "action": {
                "world_vector": f.Tensor(shape=(3,), dtype=np.float32),
                "rotation_delta": f.Tensor(shape=(3,), dtype=np.float32),
                "open_gripper": f.Scalar(dtype=np.bool_),
                "terminate_episode": f.Scalar(dtype=np.float32),
            },
        }
    elif layout == "bad_rank":  # a grayscale image stored as a rank-2 tensor
        step = {
            "observation": {"image": f.Tensor(shape=(h, w), dtype=np.uint8)},
            "action": f.Tensor(shape=(7,), dtype=np.float32),
            "language_instruction": f.Text(),
        }
    elif layout == "video":  # action-free
        step = {"observation": {"image": f.Image(shape=(h, w, 3), encoding_format="png")}}
    else:
        raise ValueError(layout)
    step.update(common)
    return f.FeaturesDict(
        {
            "steps": f.Dataset(step),
            "episode_metadata": {"episode_id": f.Scalar(dtype=np.int64)},
        }
    )


def _episode(layout: str, e: int, n: int, h: int, w: int, nan_at: int | None) -> dict[str, Any]:
    acts = np.stack([action(e, t) for t in range(n)]) if n else np.zeros((0, 7), np.float32)
    if nan_at is not None:
        acts[nan_at, 2] = np.nan
    imgs = (
        np.stack([frame(e, t, h, w) for t in range(n)]) if n else np.zeros((0, h, w, 3), np.uint8)
    )
    flags = {
        "reward": np.zeros(n, np.float32),
        "is_first": np.arange(n) == 0,
        "is_last": np.arange(n) == n - 1,
        "is_terminal": np.arange(n) == n - 1,
    }
    instr = [f"do task {e % 3}"] * n
    if layout == "bridge":
        step = {
            "observation": {"image_0": imgs, "state": acts.copy()},
            "action": acts,
            "language_instruction": instr,
        }
    elif layout == "oxe_bridge":
        step = {
            "observation": {
                "image": imgs,
                "natural_language_instruction": instr,
                "state": acts.copy(),
            },
            "action": {
                "world_vector": acts[:, :3],
                "rotation_delta": acts[:, 3:6],
                "open_gripper": (np.arange(n) % 2 == 0),
                "terminate_episode": np.zeros(n, np.float32),
            },
        }
    elif layout == "bad_rank":
        step = {
            "observation": {"image": imgs[..., 0]},
            "action": acts,
            "language_instruction": instr,
        }
    else:
        step = {"observation": {"image": imgs}}
    step.update(flags)
    return {"steps": step, "episode_metadata": {"episode_id": e}}


def write(
    out: str,
    layout: str,
    lengths: list[int],
    height: int = 16,
    width: int = 16,
    file_format: str = "array_record",
    nan_episode: int | None = None,
    nan_step: int = 1,
    val_lengths: list[int] | None = None,
) -> str:
    from lapa_jax.data.rlds_writer import write_rlds

    def examples(lens: list[int]):
        for e, n in enumerate(lens):
            nan_at = nan_step if e == nan_episode else None
            yield f"{e:06d}", _episode(layout, e, n, height, width, nan_at)

    splits = {"train": examples(lengths)}
    if val_lengths:
        splits["val"] = examples(val_lengths)
    return write_rlds(
        out,
        name=f"synthetic_{layout}",
        version="1.0.0",
        features=_features(layout, height, width),
        split_examples=splits,
        file_format=file_format,
        overwrite=True,
    )


def write_in_subprocess(out: str, layout: str, lengths: list[int], **kwargs: Any) -> str:
    args = json.dumps({"out": out, "layout": layout, "lengths": lengths, **kwargs})
    code = f"import json, tests.rlds_fixtures as r; r.write(**json.loads({args!r}))"
    run_module_or_code(code)
    return out


def run_module_or_code(code: str | None = None, module_args: list[str] | None = None) -> str:
    """Runs Python code or `-m module args` in a fresh process; raises with its stderr."""
    cmd = [sys.executable]
    cmd += ["-c", code] if code is not None else ["-m", *(module_args or [])]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout
