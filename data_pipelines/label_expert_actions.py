"""Label a Meta-World dataset's steps with its scripted expert's noise-free actions.

    python -m data_pipelines.label_expert_actions --src DIR --out labels.npz [--splits train,val]

The stored actions are the expert's plus Gaussian noise (lapa_jax.sim.metaworld,
`action_noise`). The expert is a function of the observation, and every step stores the
full observation (`observation/full_state`), so its clean action can be recomputed
without the simulator. The output has the layout of data_pipelines.label_idm_actions
("SPLIT/EPISODE" -> [T, 4], "__meta__"), so stage 3 reads it through
`data.action_labels`: pretraining on the true actions without their noise, the control
that separates "VPT's labels are denoised" from "VPT's labels are visual".
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.label_idm_actions import save_labels
from lapa_jax.data.sources import DataError, EpisodeSource, _text
from lapa_jax.sim import metaworld as mw


def expert_actions(source: EpisodeSource, experts: dict[str, Any]) -> list[np.ndarray]:
    """One [T, 4] array per episode: the expert's action at every stored observation,
    clipped to the action space as the recorder clips it."""
    out = []
    for e in range(len(source)):
        record = source.episode_record(e)
        task = _text(record["episode_metadata"]["task"])
        if task not in mw.TASK_INSTRUCTIONS:
            raise DataError(f"{source.data_dir} episode {e}: unknown Meta-World task {task!r}")
        if task not in experts:
            experts[task] = mw.make_expert(task)
        steps = record["steps"]
        obs_TD = np.stack(
            [np.asarray(steps[t]["observation"]["full_state"]) for t in range(len(steps))]
        ).astype(np.float64)
        if obs_TD.shape[1] != mw.FULL_STATE_DIM:
            raise DataError(
                f"{source.data_dir} episode {e}: full_state has {obs_TD.shape[1]} values, "
                f"expected {mw.FULL_STATE_DIM}"
            )
        with warnings.catch_warnings():  # "constants may be too high": hence the clip
            warnings.simplefilter("ignore", UserWarning)
            acts = [np.clip(experts[task].get_action(o), -1.0, 1.0) for o in obs_TD]
        out.append(np.asarray(acts, np.float32))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="a data_pipelines.metaworld_rlds dataset")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--splits", default="train,val")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    experts: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    lengths: dict[str, list[int]] = {}
    residuals = []
    for split in [s for s in args.splits.split(",") if s]:
        source = EpisodeSource(args.src, "metaworld", split)
        labels = expert_actions(source, experts)
        for e, a in enumerate(labels):
            arrays[f"{split}/{e}"] = a
            residuals.append(source.actions(e) - a)
        lengths[split] = [len(a) for a in labels]
    r = np.concatenate(residuals)
    meta = {
        "src": args.src,
        "labeller": "metaworld scripted expert, no noise",
        "lengths": lengths,
        # The stored action minus the clean one: the recorder's noise (clipped), per dim.
        "residual_std": r.std(0).round(4).tolist(),
        "residual_mean": r.mean(0).round(4).tolist(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"stored - clean action: std {meta['residual_std']}, mean {meta['residual_mean']}")
    return save_labels(args.out, arrays, meta)


if __name__ == "__main__":
    main()
