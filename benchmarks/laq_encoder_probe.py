"""Where in the encoder does a trained quantizer lose the action?

The code probe of the chosen recipe stops near its continuous latent's (about 0.75 xyz)
while a linear map of the raw 16x16 pixel difference reaches 0.82, so the loss is in the
encoder, before the codebook. This probes, on the held-out pairs `evaluate_laq` uses, the
frame difference of the encoder's features after each of its stages:

- the patch embedding (linear in each patch's normalised pixels),
- each spatial block, each temporal block, the final LayerNorm,
- the projection to latent_dim per patch, the conv reduction, the merged latent (and its
  direction alone, which is all a unit-sphere quantizer keeps), and the one-hot codes;

and, as a control for the probes' width, the conv features cut to the latent's width by
their top principal components. Per-patch stages are probed as the difference
e(x_{t+H}) - e(x_t) over the full patch grid and average-pooled to a 4x4 grid. Every
probe is the ridge regression of `lapa_jax.evaluate_laq` (which solves it in its dual
form where features outnumber pairs). It writes one JSON.

    python benchmarks/laq_encoder_probe.py --workdir runs/ablation/rvq_mask_ema --step 3600
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def frame_differences(intermediates: dict[str, Any], b: int, grid: int) -> dict[str, np.ndarray]:
    """Captured encoder outputs -> {stage: [B, grid, grid, F] difference of the two frames}
    (or [B, F] for the pooled stages)."""
    enc = intermediates["encoder"]
    out: dict[str, np.ndarray] = {}

    def per_frame(name: str, x: np.ndarray) -> None:  # [B*T, N, F]
        x = x.reshape(b, -1, grid, grid, x.shape[-1]).astype(np.float32)
        out[name] = x[:, -1] - x[:, 0]

    per_frame("patch_embed", np.asarray(enc["patch_embed"]["__call__"][0]))
    for name in sorted(k for k in enc if k.startswith("spatial_")):
        per_frame(name, np.asarray(enc[name]["__call__"][0]))
    for name in sorted(k for k in enc if k.startswith("temporal_")):
        x = np.asarray(enc[name]["__call__"][0]).astype(np.float32)  # [B*N, T, F]
        x = x.reshape(b, grid, grid, -1, x.shape[-1])
        out[name] = x[:, :, :, -1] - x[:, :, :, 0]
    per_frame("ln_final", np.asarray(enc["ln_final"]["__call__"][0]))
    if "to_latent" in enc:
        per_frame("to_latent", np.asarray(enc["to_latent"]["__call__"][0]))
    if "conv_reduce" in enc:
        x = np.asarray(enc["conv_reduce"]["__call__"][0]).astype(np.float32)
        x = x.reshape(b, 2, -1)
        out["conv_reduce"] = x[:, -1] - x[:, 0]
    return out


def pool_grid(x_BGGF: np.ndarray, side: int) -> np.ndarray:
    b, g, _, f = x_BGGF.shape
    r = g // side
    return x_BGGF.reshape(b, side, r, side, r, f).mean((2, 4))


def analyse(workdir: str, step: int | None, max_pairs: int) -> dict[str, Any]:
    from benchmarks.laq_probe_ceiling import HeldOutPairs
    from lapa_jax import evaluate_laq as E

    pairs = HeldOutPairs(workdir, step, max_pairs)
    ev, tr, te = pairs.ev, pairs.tr, pairs.te
    model, grid = ev.model, ev.model.cfg.grid

    @jax.jit
    def capture(params: Any, frames: jax.Array) -> Any:
        _, state = model.apply(
            {"params": params},
            frames,
            train=False,
            capture_intermediates=lambda mdl, _: "encoder" in mdl.path,
            mutable=["intermediates"],
        )
        return {"encoder": state["intermediates"]["encoder"]}

    def features(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(d["frames"]), ev.batch_size):
            frames = d["frames"][start : start + ev.batch_size]
            (fr,) = E.pad_to_devices(frames)
            inter = jax.device_get(capture(ev.params, fr))
            for name, x in frame_differences(inter, len(fr), grid).items():
                x = x[: len(frames)]
                if x.ndim == 4:
                    chunks.setdefault(f"{name}/grid", []).append(x.reshape(len(x), -1))
                    pooled = pool_grid(x, min(4, grid))
                    chunks.setdefault(f"{name}/pool4", []).append(pooled.reshape(len(x), -1))
                else:
                    chunks.setdefault(name, []).append(x)
        feats = {k: np.concatenate(v) for k, v in chunks.items()}
        feats["latent"] = d["delta"].reshape(len(d["delta"]), -1)
        # What the quantizer sees with latent_norm: only the latent's direction counts.
        norm = np.linalg.norm(d["delta"], axis=-1, keepdims=True) + 1e-8
        feats["latent_unit"] = (d["delta"] / norm).reshape(len(d["delta"]), -1)
        feats["codes_onehot"] = E.onehot_codes(d["codes"], model.cfg.num_codes)
        diff = d["frames"][:, 1] - d["frames"][:, 0]
        feats["pixel_difference_16x16"] = E.downsample(diff, 16).reshape(len(diff), -1)
        feats["pixel_difference_full"] = diff.reshape(len(diff), -1)
        return feats

    f_tr, f_te = features(tr), features(te)
    # A control for the probes' width: the conv features cut to the latent's width by
    # their top principal components (fitted on the train pairs, no action used).
    if "conv_reduce" in f_tr:
        d = model.cfg.latent_dim
        mean = f_tr["conv_reduce"].mean(0)
        _, _, vt = np.linalg.svd(f_tr["conv_reduce"] - mean, full_matrices=False)
        for f in (f_tr, f_te):
            f[f"conv_reduce_top{d}_components"] = (f["conv_reduce"] - mean) @ vt[:d].T
    out: dict[str, Any] = {
        "workdir": workdir,
        "checkpoint_step": ev.step,
        "train_pairs": len(pairs.y_tr),
        "test_pairs": len(pairs.y_te),
        "probes": {},
    }
    for name in f_tr:
        r2 = pairs.r2(f_tr[name], f_te[name])
        out["probes"][name] = {
            "dims": int(f_tr[name].shape[1]),
            **pairs.summary(r2),
            "r2_per_dim": [round(float(v), 4) for v in r2],
        }
        print(f"{name:32s} {out['probes'][name]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--max_pairs", type=int, default=2000)
    p.add_argument("--out", default=None, help="JSON path (default: <workdir>/encoder_probe.json)")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    result = analyse(args.workdir, args.step, args.max_pairs)
    path = args.out or os.path.join(args.workdir, "encoder_probe.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
