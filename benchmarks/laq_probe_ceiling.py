"""How much of the action could 4 x 8 codes carry, and where does ours lose it?

For one trained quantizer, on the held-out pairs `evaluate_laq` uses, this compares the
linear probe of the summed action from its one-hot codes with:
- the codes of the first s stages or positions only (what each one adds);
- its continuous latent, before quantization;
- post-hoc residual k-means (4 stages x 8 codes) of that latent, of the top principal
  components of the 16x16 pixel difference, and of the true action itself: the ceiling
  for codes of this size that are fitted without the action, and with it;
- post-hoc product k-means (one 8-code token per group of principal components, the
  oracle latents' layout) of the latent and of the pixel difference, and of each one's
  ridge fit of the action: the ceiling for codes of that feature cut along the action's
  directions;
- the same residual k-means of the latent and of the pixel difference's components after
  whitening them (unit variance per principal component);
- x_t alone, and x_t with the codes: an expert's action is largely a function of its
  state, so probes of motion features partly measure state.
It writes one JSON. Every probe is the ridge regression of `lapa_jax.evaluate_laq`.

    python benchmarks/laq_probe_ceiling.py --workdir runs/ablation/default_rvq --step 1200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kmeans(x_ND: np.ndarray, k: int, iters: int = 50, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means; an emptied centre keeps its place."""
    rng = np.random.default_rng(seed)
    centres_KD = x_ND[rng.choice(len(x_ND), k, replace=False)].copy()
    for _ in range(iters):
        assign_N = nearest(x_ND, centres_KD)
        for j in range(k):
            members = x_ND[assign_N == j]
            if len(members):
                centres_KD[j] = members.mean(0)
    return centres_KD


def nearest(x_ND: np.ndarray, centres_KD: np.ndarray) -> np.ndarray:
    return ((x_ND[:, None] - centres_KD[None]) ** 2).sum(-1).argmin(1)


def fit_residual_kmeans(x_ND: np.ndarray, k: int, stages: int) -> list[np.ndarray]:
    """Residual VQ fitted greedily: stage s clusters what stages < s left over."""
    codebooks, residual = [], x_ND.copy()
    for s in range(stages):
        c = kmeans(residual, k, seed=s)
        residual = residual - c[nearest(residual, c)]
        codebooks.append(c)
    return codebooks


def residual_codes(x_ND: np.ndarray, codebooks: list[np.ndarray]) -> np.ndarray:
    out, residual = [], x_ND.copy()
    for c in codebooks:
        a = nearest(residual, c)
        residual = residual - c[a]
        out.append(a)
    return np.stack(out, 1)


def fit_product_kmeans(x_ND: np.ndarray, k: int, tokens: int) -> list[np.ndarray]:
    """Product quantization: the dims are cut into `tokens` consecutive groups, each with
    its own k codes, as the oracle latents cut the action into one token per dimension."""
    groups = np.array_split(np.arange(x_ND.shape[1]), tokens)
    return [kmeans(x_ND[:, g], k, seed=i) for i, g in enumerate(groups)]


def product_codes(x_ND: np.ndarray, codebooks: list[np.ndarray]) -> np.ndarray:
    groups = np.array_split(np.arange(x_ND.shape[1]), len(codebooks))
    return np.stack([nearest(x_ND[:, g], c) for g, c in zip(groups, codebooks, strict=True)], 1)


def top_components(x_tr: np.ndarray, x_te: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    mean = x_tr.mean(0)
    _, _, vt = np.linalg.svd(x_tr - mean, full_matrices=False)
    basis = vt[:n].T
    return (x_tr - mean) @ basis, (x_te - mean) @ basis


def whiten(
    x_tr: np.ndarray, x_te: np.ndarray, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The top n principal components (all by default), each scaled to unit variance on
    the train set: k-means then spends its codes on every direction alike, not mostly on
    the few with the largest spread."""
    n = n or x_tr.shape[1]
    a, b = top_components(x_tr, x_te, n)
    sd = a.std(0)
    keep = sd > 1e-6 * sd.max()
    return a[:, keep] / sd[keep], b[:, keep] / sd[keep]


class HeldOutPairs:
    """A trained quantizer's train and held-out pairs as `evaluate_laq` draws them, with
    the summed action over the gap as the probes' target."""

    def __init__(self, workdir: str, step: int | None, max_pairs: int):
        from lapa_jax import evaluate_laq as E

        self.ev = ev = E.Evaluator(workdir, step=step)
        self.te = ev.collect(ev.config.data.get("eval_split", "val"), max_pairs)
        self.tr = ev.collect(ev.config.data.split, max_pairs, seed=1)
        if "actions" not in self.te:
            raise ValueError(f"{workdir}: its dataset has no actions to probe")
        self.y_tr, self.y_te = (
            (d["actions"] * d["mask"][..., None]).sum(1) for d in (self.tr, self.te)
        )
        self.gripper = ev.task.frame_pair_source("val").source.spec.gripper_index
        self.motion = [i for i in range(min(3, self.y_tr.shape[1])) if i != self.gripper]

    def r2(self, f_tr: np.ndarray, f_te: np.ndarray) -> np.ndarray:
        from lapa_jax import evaluate_laq as E

        return E.ridge_r2(f_tr, self.y_tr, f_te, self.y_te)

    def probe(self, f_tr: np.ndarray, f_te: np.ndarray) -> dict[str, float | None]:
        return self.summary(self.r2(f_tr, f_te))

    def summary(self, r2: np.ndarray) -> dict[str, float | None]:
        return {
            "r2_xyz": round(float(np.mean(r2[self.motion])), 4),
            "r2_gripper": None if self.gripper is None else round(float(r2[self.gripper]), 4),
        }


def analyse(workdir: str, step: int | None, max_pairs: int) -> dict[str, Any]:
    from lapa_jax import evaluate_laq as E

    pairs = HeldOutPairs(workdir, step, max_pairs)
    ev, tr, te, y_tr, y_te = pairs.ev, pairs.tr, pairs.te, pairs.y_tr, pairs.y_te
    k = ev.model.cfg.num_codes
    probe = pairs.probe

    def codes_probe(c_tr: np.ndarray, c_te: np.ndarray) -> dict[str, float | None]:
        return probe(E.onehot_codes(c_tr, k), E.onehot_codes(c_te, k))

    stages = tr["codes"].shape[1]
    frame_tr, frame_te = (
        E.downsample(d["frames"][:, 0], 16).reshape(len(d["frames"]), -1) for d in (tr, te)
    )
    diff_tr, diff_te = (
        E.downsample(d["frames"][:, 1] - d["frames"][:, 0], 16).reshape(len(d["frames"]), -1)
        for d in (tr, te)
    )
    lat_tr = tr["delta"].reshape(len(y_tr), -1)
    lat_te = te["delta"].reshape(len(y_te), -1)
    out: dict[str, Any] = {
        "workdir": workdir,
        "checkpoint_step": ev.step,
        "train_pairs": len(y_tr),
        "test_pairs": len(y_te),
        "codes": codes_probe(tr["codes"], te["codes"]),
        "codes_first_positions": {
            str(s): codes_probe(tr["codes"][:, :s], te["codes"][:, :s])
            for s in range(1, stages + 1)
        },
        "latent_continuous": probe(lat_tr, lat_te),
        "frame_t": probe(frame_tr, frame_te),
        "codes_plus_frame_t": probe(
            np.concatenate([E.onehot_codes(tr["codes"], k), frame_tr], 1),
            np.concatenate([E.onehot_codes(te["codes"], k), frame_te], 1),
        ),
        "pixel_difference": probe(diff_tr, diff_te),
    }

    def posthoc(f_tr: np.ndarray, f_te: np.ndarray) -> dict[str, float | None]:
        books = fit_residual_kmeans(f_tr, k, stages)
        return codes_probe(residual_codes(f_tr, books), residual_codes(f_te, books))

    out["posthoc_codes_of_latent"] = posthoc(lat_tr, lat_te)
    out["posthoc_codes_of_pixel_difference_pcs"] = {
        str(n): posthoc(*top_components(diff_tr, diff_te, n)) for n in (4, 16, 64)
    }
    # Would a quantizer that whitens its input first (PCA, unit variance) keep more?
    out["posthoc_codes_of_whitened_latent"] = posthoc(*whiten(lat_tr, lat_te))
    out["posthoc_codes_of_whitened_pixel_difference_pcs"] = {
        str(n): posthoc(*whiten(diff_tr, diff_te, n)) for n in (4, 16, 64)
    }
    scale = y_tr.std(0) + 1e-8
    out["posthoc_codes_of_true_action"] = posthoc(y_tr / scale, y_te / scale)

    def product(f_tr: np.ndarray, f_te: np.ndarray) -> dict[str, float | None]:
        books = fit_product_kmeans(f_tr, k, stages)
        return codes_probe(product_codes(f_tr, books), product_codes(f_te, books))

    # Codes laid out like the oracle's (one token per direction) instead of residually.
    out["posthoc_product_codes_of_latent_pcs"] = {
        str(n): product(*top_components(lat_tr, lat_te, n)) for n in (stages, 4 * stages)
    }
    out["posthoc_product_codes_of_pixel_difference_pcs"] = {
        str(n): product(*top_components(diff_tr, diff_te, n)) for n in (stages, 4 * stages)
    }
    # Supervised ceilings for codes of visual change: a feature's ridge prediction of the
    # action (fitted with the labels), one token per action dimension. What 4 x 8 codes of
    # that feature could keep if their directions were the action's.
    for name, (f_tr, f_te) in (
        ("latent", (lat_tr, lat_te)),
        ("pixel_difference", (diff_tr, diff_te)),
    ):
        fit_tr, fit_te = (E.ridge_predict(f_tr, y_tr, f) / scale for f in (f_tr, f_te))
        out[f"posthoc_product_codes_of_{name}_action_fit"] = product(fit_tr, fit_te)
    out["posthoc_product_codes_of_true_action"] = product(y_tr / scale, y_te / scale)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--max_pairs", type=int, default=2000)
    p.add_argument(
        "--out", default=None, help="JSON path (default: WORKDIR/eval/probe_ceiling_STEP.json)"
    )
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    result = analyse(args.workdir, args.step, args.max_pairs)
    path = args.out or os.path.join(
        args.workdir, "eval", f"probe_ceiling_{result['checkpoint_step']:07d}.json"
    )
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print("wrote", path)
    return result


if __name__ == "__main__":
    main()
