"""Evaluate a trained latent action quantizer, always beside the baselines.

    python -m lapa_jax.evaluate_laq --workdir runs/laq [--split val] [--max_pairs 2000]

Reports (JSON in WORKDIR/eval/, and a table on screen):
- PSNR of the predicted x_{t+H}, next to simply copying x_t; the same on the pixels that
  change between the two frames;
- delta-t-PSNR: PSNR with the inferred latent minus PSNR with random codes (near 0 means
  the decoder ignores the latent);
- code usage and perplexity per latent position and pooled, distinct whole actions;
- linear (ridge) probes of the true actions summed over the gap, fitted on the train
  split and scored (R^2) on the held-out split, from one-hot codes, from the continuous
  latent difference, and from the raw pixel difference (the baseline to beat);
and writes a latent-action atlas PNG: each code at each position decoded from a few frames.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lapa_jax.checkpointing import Checkpointer
from lapa_jax.metric_writers import image_grid, save_png
from lapa_jax.models.laq import LAQ
from lapa_jax.tasks.laq import CHANGE_THRESHOLD, LAQTask, changed_pixels, downsample
from lapa_jax.trainer import Trainer

PREFIX_TOKENS = (1, 4)  # probed alone too, when a latent action has more tokens


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} has no config.json: not a training run folder")
    with open(path) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    cfg.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    return cfg


def load_params(
    workdir: str, config: ml_collections.ConfigDict, step: int | None = None
) -> tuple[Any, int]:
    trainer = Trainer(config, workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    restored = ckpt.restore(trainer.abstract_state, None, step)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    state, step = restored
    return state.params, step


def ridge_predict(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    lam: float = 1e-2,
    dual: bool | None = None,
) -> np.ndarray:
    """Predictions on x_te of a ridge regression (standardised features, free intercept)
    fitted on the train set. `dual` (by default: when features outnumber train rows)
    solves the same regression through the rows' N x N kernel, so an 8,192-wide encoder
    feature costs an N x N solve, not a D x D one; the centred features make the
    intercept the train mean of y."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    a, b = (x_tr - mu) / sd, (x_te - mu) / sd
    if dual if dual is not None else a.shape[1] > len(a):
        y_mean = y_tr.mean(0)
        gram = a @ a.T + lam * len(a) * np.eye(len(a))
        return b @ (a.T @ np.linalg.solve(gram, y_tr - y_mean)) + y_mean
    a = np.concatenate([a, np.ones((len(a), 1))], 1)
    b = np.concatenate([b, np.ones((len(b), 1))], 1)
    reg = lam * len(a) * np.eye(a.shape[1])
    reg[-1, -1] = 0.0
    return b @ np.linalg.solve(a.T @ a + reg, a.T @ y_tr)


def ridge_r2(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, lam: float = 1e-2
) -> np.ndarray:
    """Per-target R^2 on the test set of a ridge regression fitted on the train set."""
    pred = ridge_predict(x_tr, y_tr, x_te, lam)
    ss_res = ((y_te - pred) ** 2).sum(0)
    ss_tot = ((y_te - y_te.mean(0)) ** 2).sum(0) + 1e-12
    return 1.0 - ss_res / ss_tot


def onehot_codes(codes_NL: np.ndarray, num_codes: int) -> np.ndarray:
    """[N, L] codes -> [N, L * num_codes] one-hot features, the probes' code input."""
    return np.eye(num_codes, dtype=np.float32)[codes_NL].reshape(len(codes_NL), -1)


def pad_to_devices(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Repeats the last row so the batch splits evenly over the devices."""
    pad = (-len(arrays[0])) % jax.device_count()
    if not pad:
        return arrays
    return tuple(np.concatenate([a, np.repeat(a[-1:], pad, 0)]) for a in arrays)


def _psnr(mse: np.ndarray) -> np.ndarray:
    return -10.0 * np.log10(np.maximum(mse, 1e-10))


class Evaluator:
    def __init__(self, workdir: str, batch_size: int = 64, step: int | None = None):
        self.workdir = workdir
        self.config = load_config(workdir)
        self.task = LAQTask(self.config)
        self.model: LAQ = self.task.model
        self.params, self.step = load_params(workdir, self.config, step)
        self.batch_size = batch_size
        m = self.model
        self._forward = jax.jit(lambda p, f: m.apply({"params": p}, f, train=False))
        self._decode = jax.jit(lambda p, x, c: m.apply({"params": p}, x, c, method=LAQ.decode))

    def collect(self, split: str, max_pairs: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Encodes up to max_pairs evenly drawn pairs of a split."""
        src = self.task.frame_pair_source(split)
        n = len(src)
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(n, size=min(n, max_pairs), replace=False))
        out: dict[str, list[np.ndarray]] = {
            k: [] for k in ("frames", "recon", "codes", "delta", "actions", "mask", "random_recon")
        }
        k = self.model.cfg.num_codes
        for start in range(0, len(idx), self.batch_size):
            items = [src[int(i)] for i in idx[start : start + self.batch_size]]
            frames = np.stack([it["frames"] for it in items])
            (fr,) = pad_to_devices(frames)
            res = jax.device_get(self._forward(self.params, fr))
            rand_codes = rng.integers(0, k, size=res["codes"].shape).astype(np.int32)
            rand = np.asarray(self._decode(self.params, fr[:, 0], rand_codes))
            keep = len(frames)
            out["frames"].append(frames)
            out["recon"].append(np.clip(res["recon"][:keep], 0, 1))
            out["random_recon"].append(np.clip(rand[:keep], 0, 1))
            out["codes"].append(res["codes"][:keep])
            out["delta"].append(res["delta"][:keep])
            if "actions" in items[0]:
                out["actions"].append(np.stack([it["actions"] for it in items]))
                out["mask"].append(np.stack([it["action_mask"] for it in items]))
        return {k: np.concatenate(v) for k, v in out.items() if v}

    def evaluate(
        self, split: str = "val", train_split: str = "train", max_pairs: int = 2000
    ) -> dict[str, Any]:
        ev = self.collect(split, max_pairs)
        x0, x1 = ev["frames"][:, 0], ev["frames"][:, 1]
        k = self.model.cfg.num_codes
        mse = lambda a, b: ((a - b) ** 2).mean((1, 2, 3))  # noqa: E731
        change = np.asarray(changed_pixels(x0, x1, CHANGE_THRESHOLD)) > 0  # [N, H, W]
        frac_changed = float(change.mean())

        def changed_psnr(pred: np.ndarray) -> float:
            err = ((pred - x1) ** 2).mean(-1)
            return float(_psnr(np.array(err[change].mean())))

        codes = ev["codes"]
        counts = np.stack([np.bincount(codes[:, p], minlength=k) for p in range(codes.shape[1])])
        probs = counts / counts.sum(1, keepdims=True)
        ppl = np.exp(-(np.where(probs > 0, probs * np.log(np.maximum(probs, 1e-12)), 0)).sum(1))
        pooled = counts.sum(0) / counts.sum()
        report: dict[str, Any] = {
            "workdir": self.workdir,
            "checkpoint_step": self.step,
            "split": split,
            "num_pairs": len(codes),
            "frame_gap": self.config.data.frame_gap,
            "psnr": float(_psnr(mse(ev["recon"], x1)).mean()),
            "psnr_copy_baseline": float(_psnr(mse(x0, x1)).mean()),
            "psnr_random_latent": float(_psnr(mse(ev["random_recon"], x1)).mean()),
            "fraction_pixels_changing": frac_changed,
            "psnr_changing_pixels": changed_psnr(ev["recon"]),
            "psnr_changing_pixels_copy_baseline": changed_psnr(x0),
            "codes_used_per_position": (counts > 0).sum(1).tolist(),
            "perplexity_per_position": ppl.tolist(),
            "codes_used_pooled": int((pooled > 0).sum()),
            "perplexity_pooled": float(
                np.exp(-(np.where(pooled > 0, pooled * np.log(np.maximum(pooled, 1e-12)), 0)).sum())
            ),
            "distinct_actions": len({tuple(c) for c in codes.tolist()}),
        }
        report["delta_t_psnr"] = report["psnr"] - report["psnr_random_latent"]
        if "actions" in ev:
            report["probe"] = self.probes(ev, train_split, max_pairs)
        return report

    def probes(self, ev: dict[str, np.ndarray], train_split: str, max_pairs: int) -> dict[str, Any]:
        tr = self.collect(train_split, max_pairs, seed=1)
        k = self.model.cfg.num_codes
        spec = self.task.frame_pair_source(train_split).source.spec

        def target(d: dict[str, np.ndarray]) -> np.ndarray:
            return (d["actions"] * d["mask"][..., None]).sum(1)

        def features(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            x0, x1 = d["frames"][:, 0], d["frames"][:, 1]
            codes = onehot_codes(d["codes"], k)
            pixel_diff = downsample(x1 - x0, 16).reshape(len(x0), -1)
            # An expert's action is largely a function of the state it is in, so x_t alone
            # predicts much of it; "+ frame_t" rows show what the motion adds to that.
            frame_t = downsample(x0, 16).reshape(len(x0), -1)
            # The first tokens alone: a residual quantizer's coarse stages, what stage 2
            # trains on with data.latent_tokens = n.
            prefixes = {
                f"codes_onehot_first_{n}": onehot_codes(d["codes"][:, :n], k)
                for n in PREFIX_TOKENS
                if n < d["codes"].shape[1]
            }
            return {
                "codes_onehot": codes,
                **prefixes,
                "latent_continuous": d["delta"].reshape(len(x0), -1),
                "pixel_difference_16x16": pixel_diff,
                "pixel_difference_8x8": downsample(x1 - x0, 8).reshape(len(x0), -1),
                "frame_t_16x16": frame_t,
                "codes_onehot_plus_frame_t": np.concatenate([codes, frame_t], 1),
                "pixel_difference_plus_frame_t": np.concatenate([pixel_diff, frame_t], 1),
            }

        y_tr, y_te = target(tr), target(ev)
        f_tr, f_te = features(tr), features(ev)
        dims = y_tr.shape[1]
        gripper = (
            spec.gripper_index
            if spec.gripper_index is not None and spec.gripper_index < dims
            else None
        )
        motion = [i for i in range(min(3, dims)) if i != gripper]
        out: dict[str, Any] = {
            "train_pairs": len(y_tr),
            "test_pairs": len(y_te),
            "target": "actions summed over the gap",
        }
        for name in f_tr:
            r2 = ridge_r2(f_tr[name], y_tr, f_te[name], y_te)
            out[name] = {
                "r2_xyz": float(np.mean(r2[motion])) if motion else None,
                "r2_gripper": float(r2[gripper]) if gripper is not None else None,
                "r2_per_dim": r2.tolist(),
            }
        return out

    def atlas(self, path: str, num_frames: int = 3, split: str = "val") -> str:
        """Rows: (frame, latent position); columns: x_t, x_{t+H}, then each code decoded."""
        src = self.task.frame_pair_source(split)
        idx = np.linspace(0, len(src) - 1, num_frames).astype(int)
        frames = np.stack([src[int(i)]["frames"] for i in idx])
        (fr,) = pad_to_devices(frames)
        base = np.asarray(jax.device_get(self._forward(self.params, fr))["codes"])
        cfg = self.model.cfg
        k, n_pos = cfg.num_codes, cfg.num_latent_tokens
        # One row per (frame, position); the last position row sets every position.
        xs, cs = [], []
        for i in range(len(frames)):
            for p in range(n_pos + 1):
                codes = np.repeat(base[None, i], k, 0)
                if p < n_pos:
                    codes[:, p] = np.arange(k)
                else:
                    codes[:] = np.arange(k)[:, None]
                cs.append(codes)
                xs.append(np.repeat(frames[None, i, 0], k, 0))
        x_all, c_all = pad_to_devices(np.concatenate(xs), np.concatenate(cs).astype(np.int32))
        decoded = np.clip(np.asarray(self._decode(self.params, x_all, jnp.asarray(c_all))), 0, 1)
        rows = []
        for r in range(len(xs)):
            i = r // (n_pos + 1)
            rows.append([frames[i, 0], frames[i, 1], *decoded[r * k : (r + 1) * k]])
        save_png(path, image_grid(rows))
        return path


def format_report(r: dict[str, Any]) -> str:
    distinct = f"distinct {len(r['codes_used_per_position'])}-code actions"
    lines = [
        f"LAQ evaluation: {r['workdir']} step {r['checkpoint_step']}, {r['num_pairs']} {r['split']} pairs (gap {r['frame_gap']})",
        f"  PSNR predicted / copy x_t           {r['psnr']:.2f} / {r['psnr_copy_baseline']:.2f} dB",
        f"  PSNR changing pixels ({100 * r['fraction_pixels_changing']:.1f}%) / copy    {r['psnr_changing_pixels']:.2f} / {r['psnr_changing_pixels_copy_baseline']:.2f} dB",
        f"  delta-t-PSNR (inferred - random)    {r['delta_t_psnr']:.3f} dB",
        f"  codes used per position             {r['codes_used_per_position']}",
        f"  perplexity per position             {[round(x, 2) for x in r['perplexity_per_position']]}",
        f"  {distinct:<36}{r['distinct_actions']}",
    ]
    if "probe" in r:
        lines.append("  linear probe R^2 (held out)         xyz      gripper")
        for name, v in r["probe"].items():
            if isinstance(v, dict):
                xyz = "n/a" if v["r2_xyz"] is None else f"{v['r2_xyz']:.3f}"
                grip = "n/a" if v["r2_gripper"] is None else f"{v['r2_gripper']:.3f}"
                lines.append(f"    {name:<32} {xyz:>8} {grip:>8}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument(
        "--split", default=None, help="held-out split (default: the config's eval_split)"
    )
    p.add_argument("--max_pairs", type=int, default=2000)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    ev = Evaluator(args.workdir, args.batch_size, args.step)
    split = args.split or ev.config.data.get("eval_split", "val")
    report = ev.evaluate(split=split, train_split=ev.config.data.split, max_pairs=args.max_pairs)
    out_dir = os.path.join(args.workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    report["atlas"] = ev.atlas(os.path.join(out_dir, f"atlas_{ev.step:07d}.png"), split=split)
    with open(os.path.join(out_dir, f"laq_eval_{ev.step:07d}.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(format_report(report))
    print(f"  atlas: {report['atlas']}")
    return report


if __name__ == "__main__":
    main()
