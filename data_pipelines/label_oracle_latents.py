"""Label a dataset's steps with oracle latent actions: its true actions, binned.

    python -m data_pipelines.label_oracle_latents --src DIR --spec metaworld --out codes.npz \
        --frame_gap 4 [--codes 8]

Each step t gets one code per action dimension: the action summed over the frame gap
(t to t + H, clipped at the episode's end as the quantizer's pairs are), put into one of
`codes` bins at the quantiles of the train split. With Meta-World's 4-dim actions that is
exactly the quantizer's layout (4 tokens of 8 codes), so latent pretraining on these
codes (`data.latent_labels`) is LAPA with latents that carry the action as well as 8
bins can: what the LAPA pipeline gives when the quantizer is not the problem.

The output has the layout of data_pipelines.label_idm_actions ("SPLIT/EPISODE" ->
[T, A] int32, and "__meta__" with the bin edges).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.label_idm_actions import save_labels
from data_pipelines.label_latent_actions import pair_indices
from lapa_jax.data.sources import DataError, EpisodeSource


def gap_sums(actions_TA: np.ndarray, frame_gap: int) -> np.ndarray:
    """[T, A]: the actions from t up to the pair's second frame (zero at the last step,
    whose pair is the frame with itself)."""
    second, _ = pair_indices(len(actions_TA), frame_gap)
    cum = np.concatenate([np.zeros((1, actions_TA.shape[1])), np.cumsum(actions_TA, 0)])
    return (cum[second] - cum[np.arange(len(actions_TA))]).astype(np.float32)


def quantile_edges(values_NA: np.ndarray, codes: int) -> np.ndarray:
    """[A, codes - 1] inner bin edges at the 1/codes ... (codes-1)/codes quantiles."""
    q = np.arange(1, codes) / codes
    return np.quantile(values_NA, q, axis=0).T.astype(np.float32)


def bin_codes(values_NA: np.ndarray, edges_AE: np.ndarray) -> np.ndarray:
    return np.stack(
        [np.searchsorted(edges_AE[a], values_NA[:, a], side="right") for a in range(len(edges_AE))],
        -1,
    ).astype(np.int32)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="a TFDS/RLDS dataset folder with actions")
    p.add_argument("--spec", required=True, help="registered spec name or a spec file")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--frame_gap", type=int, required=True, help="the quantizer's, in frames")
    p.add_argument("--codes", type=int, default=8, help="bins per action dimension")
    p.add_argument("--splits", default="train,val", help="the first one fits the bins")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.frame_gap < 1 or args.codes < 2:
        raise ValueError(
            f"--frame_gap must be >= 1 and --codes >= 2, got {args.frame_gap}, {args.codes}"
        )
    splits = [s for s in args.splits.split(",") if s]
    sums: dict[str, list[np.ndarray]] = {}
    for split in splits:
        source = EpisodeSource(args.src, args.spec, split)
        if not source.spec.has_actions:
            raise DataError(f"{args.src}: spec {source.spec.name!r} has no actions to bin")
        sums[split] = []
        for e in range(len(source)):
            a = source.actions(e)
            if len(a) == 0:
                raise DataError(f"{args.src} split {split!r} episode {e}: empty episode")
            if not np.all(np.isfinite(a)):
                raise DataError(f"{args.src} split {split!r} episode {e}: non-finite actions")
            sums[split].append(gap_sums(a, args.frame_gap))
    edges = quantile_edges(np.concatenate(sums[splits[0]]), args.codes)
    arrays = {
        f"{split}/{e}": bin_codes(s, edges) for split in splits for e, s in enumerate(sums[split])
    }
    all_codes = np.concatenate([arrays[f"{splits[0]}/{e}"] for e in range(len(sums[splits[0]]))])
    used = [len(np.unique(all_codes[:, a])) for a in range(all_codes.shape[1])]
    meta = {
        "src": args.src,
        "labeller": f"true actions summed over {args.frame_gap} frames, {args.codes} quantile bins",
        "frame_gap": args.frame_gap,
        "codes": args.codes,
        "edges": edges.tolist(),
        "codes_used_per_dimension": used,
        "lengths": {split: [len(s) for s in sums[split]] for split in splits},
    }
    print(f"codes used per dimension ({splits[0]}): {used} of {args.codes}")
    return save_labels(args.out, arrays, meta)


if __name__ == "__main__":
    main()
