"""Pseudo-label an action-free dataset's steps with an inverse dynamics model's actions.

    python -m data_pipelines.label_idm_actions --idm_workdir runs/idm --src DIR \
        --spec metaworld --out labels.npz [--splits train,val]

Step t of an episode of length T gets the IDM's action for (x_t, x_{t+1}); the last
step, with no next frame, repeats step T-2's. The output is one npz: an array [T, A]
per episode under "SPLIT/EPISODE", and "__meta__" (JSON: source, IDM run and step,
episode lengths), written atomically. Stage 3 reads it through `data.action_labels`,
in place of the dataset's own actions (the VPT-style baseline of the LAPA experiment).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lapa_jax.data.pipelines import square_image
from lapa_jax.data.sources import DataError, EpisodeSource


def label_episodes(task: Any, params: Any, source: EpisodeSource, batch: int) -> list[np.ndarray]:
    size, mode = task.model_cfg.image_size, str(task.config.data.resize_mode)
    out = []
    for e in range(len(source)):
        steps = source.steps(e)
        n = int(source.lengths[e])
        if n < 2:
            raise DataError(
                f"{source.data_dir} episode {e} has {n} step(s): no frame pair to label"
            )
        frames = (
            np.stack(
                [square_image(source.image(e, t, steps), size, mode) for t in range(n)]
            ).astype(np.float32)
            / 255.0
        )
        pairs = np.stack([frames[:-1], frames[1:]], axis=1)
        pred = np.concatenate(
            [task.predict(params, pairs[i : i + batch]) for i in range(0, len(pairs), batch)]
        )
        out.append(np.concatenate([pred, pred[-1:]]).astype(np.float32))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idm_workdir", required=True)
    p.add_argument("--src", required=True, help="the dataset to label")
    p.add_argument("--spec", required=True, help="its spec name or JSON file")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--splits", default="train,val")
    p.add_argument("--batch_size", type=int, default=256)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    import jax

    from lapa_jax.evaluate_laq import load_config, load_params
    from lapa_jax.tasks.idm import IDMTask

    config = load_config(args.idm_workdir)
    if config.get("task") != "idm":
        raise ValueError(f"{args.idm_workdir} is a {config.get('task')!r} run, not an idm run")
    task = IDMTask(config)
    params, step = load_params(args.idm_workdir, config)
    params = jax.device_get(params)
    t0 = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    lengths: dict[str, list[int]] = {}
    for split in [s for s in args.splits.split(",") if s]:
        source = EpisodeSource(args.src, args.spec, split)
        labels = label_episodes(task, params, source, args.batch_size)
        for e, a in enumerate(labels):
            arrays[f"{split}/{e}"] = a
        lengths[split] = [len(a) for a in labels]
    meta = {
        "src": os.path.abspath(args.src),
        "idm_workdir": os.path.abspath(args.idm_workdir),
        "idm_step": int(step),
        "lengths": lengths,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return save_labels(args.out, arrays, meta)


def save_labels(out: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """Writes the labels npz atomically (a reader never sees half a file); `meta` must
    hold "lengths" (split -> episode lengths)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}.npz"
    np.savez(tmp, __meta__=np.asarray(json.dumps(meta)), **arrays)
    os.replace(tmp, out)
    lengths = meta["lengths"]
    n = sum(len(v) for v in lengths.values())
    print(f"labelled {n} episodes ({sum(map(sum, lengths.values()))} steps) -> {out}")
    return meta


if __name__ == "__main__":
    main()
