"""How close an IDM's pseudo-labels (data_pipelines/label_idm_actions.py) are to the
actions the video set really has: R^2 and residual std per action dimension, and the
two standard deviations. The VPT arm of the experiment pretrains on such labels.

    python benchmarks/idm_label_agreement.py --labels runs/metaworld_lapa/data/vpt_k5.npz \
        --src runs/metaworld_lapa/data/video [--every 5] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np


def agreement(labels: dict[str, np.ndarray], true: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per-dimension agreement of labels with true actions over the episodes both have."""
    keys = sorted(true)
    missing = [k for k in keys if k not in labels]
    if missing:
        raise KeyError(f"labels have no episode {missing[0]!r} (and {len(missing) - 1} more)")
    for k in keys:
        if labels[k].shape != true[k].shape:
            raise ValueError(f"episode {k}: labels {labels[k].shape} vs actions {true[k].shape}")
    t = np.concatenate([true[k] for k in keys]).astype(np.float64)
    lab = np.concatenate([labels[k] for k in keys]).astype(np.float64)
    ss_tot = ((t - t.mean(0)) ** 2).sum(0) + 1e-12
    return {
        "episodes": len(keys),
        "steps": len(t),
        "r2_per_dim": (1 - ((t - lab) ** 2).sum(0) / ss_tot).round(4).tolist(),
        "residual_std_per_dim": (t - lab).std(0).round(4).tolist(),
        "true_std_per_dim": t.std(0).round(4).tolist(),
        "label_std_per_dim": lab.std(0).round(4).tolist(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--labels", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--spec", default="metaworld")
    p.add_argument("--split", default="train")
    p.add_argument("--every", type=int, default=1, help="use every n-th episode")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from lapa_jax.data.sources import EpisodeSource

    src = EpisodeSource(args.src, args.spec, args.split)
    with np.load(args.labels) as f:
        labels = {k: f[k] for k in f.files if k.startswith(f"{args.split}/")}
    true = {f"{args.split}/{e}": src.actions(e) for e in range(0, len(src), args.every)}
    result = {"labels": args.labels, "src": args.src, **agreement(labels, true)}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
