"""Initialising the stage-2 VLM from weights on disk.

Two sources, each for the vision encoder, the language model, or both:
- one of our own training runs (an Orbax checkpoint and its config.json);
- a PaliGemma checkpoint in big_vision's layout: an `.npz` whose keys are '/'-joined
  paths such as `img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel` (SigLIP, its
  blocks stacked on a leading layer axis) and `llm/layers/attn/q_einsum/w` (Gemma, also
  stacked). `PALIGEMMA_NAMES` below is the documented name mapping.

Every source array must land on a parameter of exactly its (converted) shape. All
mismatches are collected and raised together; a requested part whose arrays are
missing from the source is an error too. What was loaded and what kept its
initialisation is returned as a report, so nothing is skipped silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

VISION_PREFIX = "vision/"
LANGUAGE_PREFIXES = ("embedder", "layers/", "final_norm/")


class PretrainedMismatchError(ValueError):
    """Source arrays whose shapes do not fit the model; the message lists them all."""


# ours (per layer, without the layer prefix) <- big_vision path, and how to convert one
# layer's array. Vision blocks come from img/Transformer/encoderblock/..., language
# layers from llm/layers/...; arrays there carry a leading layer axis.
_IDENT: Callable[[np.ndarray], np.ndarray] = lambda a: a  # noqa: E731
PALIGEMMA_NAMES: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    # SigLIP
    "vision/patch_embed/kernel": ("img/embedding/kernel", lambda a: a.reshape(-1, a.shape[-1])),
    "vision/patch_embed/bias": ("img/embedding/bias", _IDENT),
    "vision/pos_embedding": ("img/pos_embedding", lambda a: a.reshape(-1, a.shape[-1])),
    "vision/encoder_norm/scale": ("img/Transformer/encoder_norm/scale", _IDENT),
    "vision/encoder_norm/bias": ("img/Transformer/encoder_norm/bias", _IDENT),
    "vision/head/kernel": ("img/head/kernel", _IDENT),
    "vision/head/bias": ("img/head/bias", _IDENT),
    "vision/blocks/ln_attn/scale": ("img/Transformer/encoderblock/LayerNorm_0/scale", _IDENT),
    "vision/blocks/ln_attn/bias": ("img/Transformer/encoderblock/LayerNorm_0/bias", _IDENT),
    "vision/blocks/ln_mlp/scale": ("img/Transformer/encoderblock/LayerNorm_1/scale", _IDENT),
    "vision/blocks/ln_mlp/bias": ("img/Transformer/encoderblock/LayerNorm_1/bias", _IDENT),
    **{
        f"vision/blocks/attn/{ours}/{kind}": (
            f"img/Transformer/encoderblock/MultiHeadDotProductAttention_0/{theirs}/{kind}",
            _IDENT,
        )
        for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value"), ("out", "out"))
        for kind in ("kernel", "bias")
    },
    "vision/blocks/mlp_in/kernel": (
        "img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel",
        _IDENT,
    ),
    "vision/blocks/mlp_in/bias": ("img/Transformer/encoderblock/MlpBlock_0/Dense_0/bias", _IDENT),
    "vision/blocks/mlp_out/kernel": (
        "img/Transformer/encoderblock/MlpBlock_0/Dense_1/kernel",
        _IDENT,
    ),
    "vision/blocks/mlp_out/bias": ("img/Transformer/encoderblock/MlpBlock_0/Dense_1/bias", _IDENT),
    # Gemma
    "embedder": ("llm/embedder/input_embedding", _IDENT),
    "final_norm/scale": ("llm/final_norm/scale", _IDENT),
    "layers/pre_attn_norm/scale": ("llm/layers/pre_attention_norm/scale", _IDENT),
    "layers/pre_mlp_norm/scale": ("llm/layers/pre_ffw_norm/scale", _IDENT),
    # q_einsum [H, D, Hd] -> our query kernel [D, H, Hd]
    "layers/attn/query/kernel": ("llm/layers/attn/q_einsum/w", lambda a: a.transpose(1, 0, 2)),
    # kv_einsum [2, K, D, Hd] -> key / value kernels [D, K, Hd]
    "layers/attn/key/kernel": ("llm/layers/attn/kv_einsum/w", lambda a: a[0].transpose(1, 0, 2)),
    "layers/attn/value/kernel": ("llm/layers/attn/kv_einsum/w", lambda a: a[1].transpose(1, 0, 2)),
    # attn_vec_einsum [H, Hd, D] is our out kernel as is
    "layers/attn/out/kernel": ("llm/layers/attn/attn_vec_einsum/w", _IDENT),
    # gating_einsum [2, D, F]: gate, then up
    "layers/gate/kernel": ("llm/layers/mlp/gating_einsum", lambda a: a[0]),
    "layers/up/kernel": ("llm/layers/mlp/gating_einsum", lambda a: a[1]),
    "layers/down/kernel": ("llm/layers/mlp/linear", _IDENT),
}


def _part(path: str) -> str:
    if path.startswith(VISION_PREFIX):
        return "vision"
    if path.startswith(LANGUAGE_PREFIXES) or path == "embedder":
        return "language"
    return "other"


def load_npz(path: str) -> dict[str, np.ndarray]:
    """A big_vision .npz as {'/'-path: array}, a leading 'params/' stripped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights {path} do not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .npz: {e}") from e
    return {k.removeprefix("params/"): v for k, v in flat.items()}


def paligemma_arrays(
    source: Mapping[str, np.ndarray], target_shapes: Mapping[str, tuple[int, ...]], parts: set[str]
) -> dict[str, np.ndarray]:
    """Our flat parameters (unrolled 'layer_i' or scanned layout, as in target_shapes)
    converted from a PaliGemma checkpoint, for the requested parts."""
    out: dict[str, np.ndarray] = {}
    missing = []
    for ours, (theirs, convert) in PALIGEMMA_NAMES.items():
        if _part(ours) not in parts:
            continue
        if theirs not in source:
            missing.append(theirs)
            continue
        arr = np.asarray(source[theirs])
        stacked = ours.startswith(("vision/blocks/", "layers/"))
        if not stacked:
            out[ours] = convert(arr)
            continue
        per_layer = [convert(a) for a in arr]
        head = "layers" if ours.startswith("layers/") else "vision/blocks"
        rest = ours[len(head) + 1 :]
        if f"{head}/{rest}" in target_shapes:  # scanned: keep the layer axis
            out[f"{head}/{rest}"] = np.stack(per_layer)
        else:
            for i, a in enumerate(per_layer):
                out[f"{head}/layer_{i}/{rest}"] = a
    if missing:
        raise PretrainedMismatchError(
            f"the PaliGemma checkpoint lacks {len(missing)} arrays for {sorted(parts)}: {missing}"
        )
    return out


def check_and_merge(
    target_shapes: Mapping[str, tuple[int, ...]], arrays: Mapping[str, np.ndarray], origin: str
) -> dict[str, np.ndarray]:
    """Every array must name a parameter of its shape; raises listing all that do not."""
    problems = []
    for path, arr in sorted(arrays.items()):
        if path not in target_shapes:
            problems.append(f"{path}: not a parameter of the model")
        elif tuple(arr.shape) != tuple(target_shapes[path]):
            problems.append(
                f"{path}: {origin} has {tuple(arr.shape)}, model has {tuple(target_shapes[path])}"
            )
    if problems:
        raise PretrainedMismatchError(
            f"{len(problems)} arrays from {origin} do not fit the model:\n  "
            + "\n  ".join(problems)
        )
    return dict(arrays)


def from_run(workdir: str, step: int | None, parts: set[str]) -> dict[str, np.ndarray]:
    """The requested parts of one of our own stage-2 runs, as flat host arrays."""
    from flax import traverse_util

    from lapa_jax.evaluate_laq import load_config, load_params

    config = load_config(workdir)
    if config.get("task") not in ("latent_pretrain", "action_finetune"):
        raise ValueError(f"{workdir} is a {config.get('task')!r} run, not a VLM run")
    params, _ = load_params(workdir, config, step)
    flat = traverse_util.flatten_dict(params, sep="/")
    return {k: np.asarray(v) for k, v in flat.items() if _part(k) in parts}


def pretrained_arrays(
    init: Any, target_shapes: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays to overwrite after initialisation, from config `init` (vision_from,
    language_from: a run folder or a PaliGemma .npz), and a report of what came from
    where."""
    arrays: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {}
    npz_cache: dict[str, dict[str, np.ndarray]] = {}
    for part in ("vision", "language"):
        src = init.get(f"{part}_from", "") if init else ""
        if not src:
            continue
        if src.endswith(".npz"):
            if src not in npz_cache:
                npz_cache[src] = load_npz(src)
            got = paligemma_arrays(npz_cache[src], target_shapes, {part})
        else:
            step = init.get("step", -1)
            got = from_run(src, None if step is None or step < 0 else int(step), {part})
        got = check_and_merge(target_shapes, got, src)
        arrays.update(got)
        report[part] = {"source": os.path.abspath(src), "arrays": len(got)}
    kept = sorted(k for k in target_shapes if k not in arrays)
    report["loaded"] = len(arrays)
    report["initialised"] = kept
    return arrays, report
