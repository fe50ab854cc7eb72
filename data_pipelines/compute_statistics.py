"""Compute a dataset split's statistics and save them as JSON next to the data.

    python -m data_pipelines.compute_statistics --data_dir DIR --spec bridge [--split train]

Prints the episode/step counts and per-dimension action mean/std/min/max/quantiles.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from lapa_jax.data import sources, statistics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--spec", required=True, help="registered spec name or a .json/.py spec file")
    p.add_argument("--split", default="train")
    p.add_argument("--skip_bad_episodes", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    source = sources.EpisodeSource(
        args.data_dir, args.spec, args.split, skip_bad_episodes=args.skip_bad_episodes or None
    )
    stats = statistics.compute_statistics(source)
    path = statistics.save_statistics(args.data_dir, stats, args.split)
    summary = {k: v for k, v in stats.items() if k not in ("spec", "action")}
    print(json.dumps(summary, indent=2))
    if "action" in stats:
        for key in ("mean", "std", "min", "max"):
            print(f"action {key:>4}: " + " ".join(f"{v:+.3f}" for v in stats["action"][key]))
    print(f"Saved {path}")
    return stats


if __name__ == "__main__":
    main()
