"""Issue-8 ablation: which levers make the latent action codes carry the action.

Each variant is `experiments/laq.py` plus command-line overrides. For each, this trains a
quantizer on the default Meta-World data (wall time measured), evaluates it on the
held-out split with `lapa_jax.evaluate_laq` (baselines included) and adds a row to
results/laq_ablation/ablation.json and the markdown table in the same folder. Finished
variants are skipped, so the script can be re-run to add variants.

    python benchmarks/laq_ablation.py --variants faithful,changed_w20 [--steps 1200]
    python benchmarks/laq_ablation.py --table   # only rewrite the markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "results", "laq_ablation")

# A smaller model than the paper's so that a variant trains in minutes on 2 CPU cores.
SMALL = [
    "--config.model.width=128",
    "--config.model.spatial_depth=2",
    "--config.model.temporal_depth=2",
    "--config.model.decoder_depth=2",
]
FAITHFUL = ["--config=experiments/laq.py:metaworld_faithful", *SMALL]
RESIDUAL = ["--config.model.residual_decoder=True"]
GLOBAL = ["--config.model.latent_pool=attention", "--config.model.decoder_latent_add=True"]
LR = ["--config.optimizer.lr=3e-4", "--config.optimizer.warmup_steps=100"]
NORM = [
    "--config.model.latent_norm=True",
    "--config.dead_code.source=latents",
    "--config.dead_code.until_step=-1",
]
BASE = [*FAITHFUL, *RESIDUAL, *GLOBAL, *LR]
FLOW = ["--config.model.flow_decoder=True"]
RVQ = ["--config.model.quantizer=rvq"]
FSQ = ["--config.model.quantizer=fsq", "--config.dead_code.enabled=False"]
# The metaworld defaults before the decoder hid half of its x_t patches: pinned, so the
# rows measured on them keep meaning what they measured.
NO_MASK = ["--config.model.decoder_mask_ratio=0.0"]
# ... and before its codebooks followed their clusters (codebook_ema, rvq_mask_ema).
NO_EMA = ["--config.codebook_ema=0.0"]
# ... and before it had 16 tokens on a 128-d latent (rvq_mask_ema_t16_d128). Later flags
# win, so a row may set either again.
_METAWORLD_FILE = [
    "--config=experiments/laq.py:metaworld",
    "--config.model.num_latent_tokens=4",
    "--config.model.latent_dim=32",
]
METAWORLD = [*_METAWORLD_FILE, *NO_EMA]
DEFAULT_RVQ = [*METAWORLD, *RVQ, *NO_MASK]
# rvq_mask and rvq_mask_ema, defaults in turn: spelled out, so their rows stay put if the
# default moves on.
_MASK = [*_METAWORLD_FILE, *RVQ, "--config.model.decoder_mask_ratio=0.5"]
RVQ_MASK = [*_MASK, *NO_EMA]
RVQ_MASK_EMA = [*_MASK, "--config.codebook_ema=0.99"]
T16_D128 = [*RVQ_MASK_EMA, "--config.model.num_latent_tokens=16", "--config.model.latent_dim=128"]

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "faithful": ("the paper's recipe (small model)", FAITHFUL),
    "changed_w20": (
        "faithful + changing pixels weighted x21 in the loss",
        [*FAITHFUL, "--config.loss.changed_weight=20"],
    ),
    "residual": ("faithful + decoder predicts x_t + a correction", [*FAITHFUL, *RESIDUAL]),
    "residual_global": (
        "residual + attention-pooled latent, added to every decoder token",
        [*FAITHFUL, *RESIDUAL, *GLOBAL],
    ),
    "residual_global_lr": ("residual_global + lr 3e-4 with warmup", BASE),
    "rgl_changed_w4": (
        "residual_global_lr + changing pixels x5",
        [*BASE, "--config.loss.changed_weight=4"],
    ),
    "rgl_norm": ("residual_global_lr + cosine NSVQ, dead codes from latents", [*BASE, *NORM]),
    "rgl_fsq": (
        "residual_global_lr with FSQ (2,2,2) instead of NSVQ",
        [*BASE, *FSQ],
    ),
    "rgl_entropy": (
        "residual_global_lr + usage-entropy regulariser",
        [
            *BASE,
            "--config.loss.usage_entropy_weight=0.1",
            "--config.loss.usage_entropy_temperature=4.0",
        ],
    ),
    "rgl_mask": (
        "residual_global_lr + decoder sees 75% of x_t patches",
        [*BASE, "--config.model.decoder_mask_ratio=0.25"],
    ),
    "flow": ("faithful + flow-warp decoder", [*FAITHFUL, "--config.model.flow_decoder=True"]),
    "flow_lr": ("flow + lr 3e-4 with warmup", [*FAITHFUL, *FLOW, *LR]),
    "flow_lr_gap4": (
        "flow_lr with frame gap 4",
        [*FAITHFUL, *FLOW, *LR, "--config.data.frame_gap=4"],
    ),
    "flow_lr_global": (
        "flow_lr + attention-pooled latent added to every decoder token",
        [*FAITHFUL, *FLOW, *LR, *GLOBAL],
    ),
    "flow_lr_gap4_norm": (
        "flow_lr_gap4 + cosine NSVQ, dead codes re-seeded from latents throughout",
        [*FAITHFUL, *FLOW, *LR, "--config.data.frame_gap=4", *NORM],
    ),
    "flow_lr_gap4_norm_global": (
        "flow_lr_gap4_norm + attention-pooled latent added to every decoder token",
        [*FAITHFUL, *FLOW, *LR, "--config.data.frame_gap=4", *NORM, *GLOBAL],
    ),
    "metaworld_default": (
        "the previous metaworld default (= flow_lr_gap4_norm: one codebook, conv pooling)",
        [*METAWORLD, "--config.model.quantizer=nsvq", *NO_MASK],
    ),
    "flow_lr_gap4_fsq": (
        "flow_lr_gap4 with FSQ (2,2,2) instead of NSVQ",
        [*FAITHFUL, *FLOW, *LR, "--config.data.frame_gap=4", *FSQ],
    ),
    "rgl_gap4": ("residual_global_lr with frame gap 4", [*BASE, "--config.data.frame_gap=4"]),
    "default_rvq": (
        "flow_lr_gap4_norm with the 4 conv-pooled vectors merged into one latent and "
        "quantized by residual NSVQ in 4 stages (the metaworld default since)",
        DEFAULT_RVQ,
    ),
    "default_rvq_attn": (
        "default_rvq with one attention-pooled latent, added to every decoder token",
        [*DEFAULT_RVQ, *GLOBAL],
    ),
    "rvq_d8": (
        "default_rvq with an 8-dim latent: a narrower bottleneck for the motion",
        [*DEFAULT_RVQ, "--config.model.latent_dim=8"],
    ),
    "rvq_d8_nonorm": (
        "rvq_d8 without the unit-sphere latent, so its length can carry the speed",
        [
            *DEFAULT_RVQ,
            "--config.model.latent_dim=8",
            "--config.model.latent_norm=False",
        ],
    ),
    "default_rvq_gap8": (
        "default_rvq with frame gap 8 (16 simulator steps): twice the motion again",
        [*DEFAULT_RVQ, "--config.data.frame_gap=8"],
    ),
    "rvq_d4_nonorm": (
        "rvq_d8_nonorm with a 4-dim latent: as many numbers as the action has",
        [
            *DEFAULT_RVQ,
            "--config.model.latent_dim=4",
            "--config.model.latent_norm=False",
        ],
    ),
    "default_rvq_seed1": (
        "default_rvq with another training seed: how far one seed moves the measures",
        [*DEFAULT_RVQ, "--config.train.seed=1"],
    ),
    "rvq_shift4": (
        "default_rvq with the latent encoded from a view shifted by up to 4 pixels and "
        "decoded onto another: where things are no longer carries over, how they move does",
        [*DEFAULT_RVQ, "--config.loss.view_shift=4"],
    ),
    "rvq_nopos": (
        "default_rvq whose encoder has no spatial position embedding: it cannot say "
        "where in the image a change is",
        [*DEFAULT_RVQ, "--config.model.encoder_spatial_pos=False"],
    ),
    "rvq_nopos_seed1": (
        "rvq_nopos with another training seed: does its edge over default_rvq hold?",
        [
            *DEFAULT_RVQ,
            "--config.model.encoder_spatial_pos=False",
            "--config.train.seed=1",
        ],
    ),
    "rvq_diff": (
        "default_rvq + a linear head that predicts the 16x16 frame difference from the "
        "quantized latent alone (weight 0.01 on its relative error): the codes must carry, "
        "linearly, what the pixel-difference probe reads",
        [
            *DEFAULT_RVQ,
            "--config.model.diff_head_size=16",
            "--config.loss.diff_weight=0.01",
        ],
    ),
    "rvq_mask": (
        "default_rvq whose decoder sees half of the x_t patches in training: for the hidden "
        "half, where and how far pixels move must come from the latent",
        RVQ_MASK,
    ),
    "rvq_mask_seed1": (
        "rvq_mask with another training seed",
        [
            *RVQ_MASK,
            "--config.train.seed=1",
        ],
    ),
    "rvq_mask75": (
        "rvq_mask with three quarters of the x_t patches hidden",
        [*METAWORLD, *RVQ, "--config.model.decoder_mask_ratio=0.75"],
    ),
    "rvq_mask_entropy": (
        "rvq_mask + the usage-entropy regulariser (weight 0.1, temperature 4), for the "
        "stage whose perplexity falls under 5",
        [
            *RVQ_MASK,
            "--config.loss.usage_entropy_weight=0.1",
            "--config.loss.usage_entropy_temperature=4.0",
        ],
    ),
    "rvq_mask_nopos": (
        "rvq_mask whose encoder has no spatial position embedding: the two levers that "
        "each lifted the code probe, together",
        [
            *RVQ_MASK,
            "--config.model.encoder_spatial_pos=False",
        ],
    ),
    "rvq_mask_nopos_seed1": (
        "rvq_mask_nopos with another training seed: is its lead over rvq_mask more than one "
        "seed's spread?",
        [
            *RVQ_MASK,
            "--config.model.encoder_spatial_pos=False",
            "--config.train.seed=1",
        ],
    ),
    "rvq_mask_parts4": (
        "rvq_mask whose flow is 4 affine part motions, linear in the latent, on masks "
        "segmented from x_t alone: the latent can say how things move, not where they are",
        [
            *RVQ_MASK,
            "--config.model.motion_parts=4",
        ],
    ),
    "rvq_mask_parts4_only": (
        "rvq_mask_parts4 where the latent reaches the decoder only through the part motions "
        "(the pixel correction sees x_t, not the latent)",
        [
            *RVQ_MASK,
            "--config.model.motion_parts=4",
            "--config.model.motion_only=True",
        ],
    ),
    "rvq_mask_gap8": (
        "rvq_mask with frame gap 8 (16 simulator steps): the gap that lifted default_rvq's "
        "probes, with the lever that lifted them at gap 4",
        [
            *RVQ_MASK,
            "--config.data.frame_gap=8",
        ],
    ),
    "rvq_mask_cb16": (
        "rvq_mask with 16 codes per stage: twice the vocabulary per latent token",
        [
            *RVQ_MASK,
            "--config.model.codebook_size=16",
        ],
    ),
    "rvq_mask_ema": (
        "rvq_mask whose codebooks also follow their inputs' cluster means (online k-means, "
        "decay 0.99): post-hoc k-means of rvq_mask's latent probes above its own codes",
        RVQ_MASK_EMA,
    ),
    "rvq_mask_ema_seed1": (
        "rvq_mask_ema with another training seed",
        [*RVQ_MASK_EMA, "--config.train.seed=1"],
    ),
    "rvq_mask_ema_nonorm": (
        "rvq_mask_ema without the unit-sphere latent: with the codebooks following their "
        "clusters, the latent's length is free to carry how far the arm moves",
        [*RVQ_MASK_EMA, "--config.model.latent_norm=False"],
    ),
    "rvq_mask_ema_cb16": (
        "rvq_mask_ema with 16 codes per stage (cb16 lifted rvq_mask's gripper probe)",
        [*RVQ_MASK_EMA, "--config.model.codebook_size=16"],
    ),
    "rvq_mask_ema_cb16_seed1": (
        "rvq_mask_ema_cb16 with another training seed",
        [*RVQ_MASK_EMA, "--config.model.codebook_size=16", "--config.train.seed=1"],
    ),
    "rvq_mask_ema_gap8": (
        "rvq_mask_ema with frame gap 8 (16 simulator steps): more motion per pair",
        [*RVQ_MASK_EMA, "--config.data.frame_gap=8"],
    ),
    "rvq_mask_ema_cos": (
        "rvq_mask_ema with the learning rate decayed on a cosine to a tenth by the last step "
        "(the probe stops rising at a constant 3e-4)",
        [
            *RVQ_MASK_EMA,
            "--config.optimizer.schedule=cosine",
            "--config.optimizer.final_lr_fraction=0.1",
        ],
    ),
    "rvq_mask_ema_t16": (
        "rvq_mask_ema with 16 tokens per action (16 residual stages of 8 codes, the conv "
        "pooling 4x4): the encoder's features before the merge probe at 0.83 / 0.75, its "
        "12-bit latent at 0.75 / 0.47 (benchmarks/laq_encoder_probe.py)",
        [*RVQ_MASK_EMA, "--config.model.num_latent_tokens=16"],
    ),
    "rvq_mask_ema_t16_d64": (
        "rvq_mask_ema_t16 with a 64-dimensional latent: its codes probe as its 32-d latent "
        "does (0.72 / 0.50 against 0.74 / 0.44) while the 512 conv features before the merge "
        "probe at 0.86 / 0.89 (their top 32 components at 0.77 / 0.42): the latent's width "
        "narrows what the codes can carry",
        [
            *RVQ_MASK_EMA,
            "--config.model.num_latent_tokens=16",
            "--config.model.latent_dim=64",
        ],
    ),
    "rvq_mask_ema_t16_d128": (
        "rvq_mask_ema_t16 with a 128-dimensional latent: does widening the merge go on "
        "lifting the codes (d64: 0.741 against 0.715)?",
        T16_D128,
    ),
    "rvq_mask_ema_t16_d128_seed1": (
        "rvq_mask_ema_t16_d128 with another training seed",
        [*T16_D128, "--config.train.seed=1"],
    ),
    "rvq_mask_ema_t16_d128_cw4": (
        "rvq_mask_ema_t16_d128 with the pixels that change weighted x5 in the loss: post-hoc "
        "residual k-means of its latent probes at 0.77 / 0.58 (codes 0.74 / 0.53), so "
        "unsupervised codes of that latent cannot reach 0.8; the latent itself must hold "
        "more of the motion (benchmarks/laq_probe_ceiling.py)",
        [*T16_D128, "--config.loss.changed_weight=4"],
    ),
    "rvq_mask_ema_t16_d128_cw16": (
        "rvq_mask_ema_t16_d128 with the pixels that change weighted x17 in the loss",
        [*T16_D128, "--config.loss.changed_weight=16"],
    ),
    "rvq_mask_ema_t16_d128_cb16": (
        "rvq_mask_ema_t16_d128 (the default) with 16 codes per stage: post-hoc codes of its "
        "latent reach 0.77 against its own 0.74, and cb16 lifted the 4 x 32 codes by 0.06",
        [*T16_D128, "--config.model.codebook_size=16"],
    ),
    "rvq_mask_ema_t16_d128_gap8": (
        "rvq_mask_ema_t16_d128 (the default) with frame gap 8 (16 simulator steps): more "
        "motion per pair (the pixel baseline rises to 0.90)",
        [*T16_D128, "--config.data.frame_gap=8"],
    ),
    "rvq_mask_cb16_seed1": (
        "rvq_mask_cb16 with another training seed",
        [
            *RVQ_MASK,
            "--config.model.codebook_size=16",
            "--config.train.seed=1",
        ],
    ),
    "rvq_mask_p4": (
        "rvq_mask with 4-pixel patches (16x16 tokens per frame, 4x the tokens): motion of a "
        "pixel or two falls inside one 8-pixel patch",
        [
            *RVQ_MASK,
            "--config.model.patch_size=4",
        ],
    ),
    "rvq_entropy": (
        "default_rvq + the usage-entropy regulariser on every residual stage (weight 0.1, "
        "temperature 4): pushes each stage's soft code use towards uniform",
        [
            *DEFAULT_RVQ,
            "--config.loss.usage_entropy_weight=0.1",
            "--config.loss.usage_entropy_temperature=4.0",
        ],
    ),
    "rvq_diff_w1": (
        "rvq_diff with weight 1 on the difference head: the difference dominates the loss",
        [
            *DEFAULT_RVQ,
            "--config.model.diff_head_size=16",
            "--config.loss.diff_weight=1.0",
        ],
    ),
}

MEASURES = (
    ("probe_xyz_codes", "probe R^2 xyz, codes"),
    ("probe_gripper_codes", "probe R^2 gripper, codes"),
    ("delta_t_psnr", "delta-t-PSNR dB"),
    ("changing_psnr_gain", "changing-pixel PSNR - copy, dB"),
    ("min_codes_used", "min codes used per position"),
    ("min_perplexity", "min perplexity per position"),
    ("collapse_alarms", "collapse alarms in training"),
)


def summarize(report: dict[str, Any], alarms: int) -> dict[str, Any]:
    probe = report["probe"]
    return {
        "probe_xyz_codes": probe["codes_onehot"]["r2_xyz"],
        "probe_gripper_codes": probe["codes_onehot"]["r2_gripper"],
        "delta_t_psnr": report["delta_t_psnr"],
        "changing_psnr_gain": report["psnr_changing_pixels"]
        - report["psnr_changing_pixels_copy_baseline"],
        "min_codes_used": min(report["codes_used_per_position"]),
        "min_perplexity": min(report["perplexity_per_position"]),
        "collapse_alarms": alarms,
        "baselines": {
            "probe_xyz_pixel_difference_16x16": probe["pixel_difference_16x16"]["r2_xyz"],
            "probe_gripper_pixel_difference_16x16": probe["pixel_difference_16x16"]["r2_gripper"],
            "probe_xyz_latent_continuous": probe["latent_continuous"]["r2_xyz"],
            "probe_gripper_latent_continuous": probe["latent_continuous"]["r2_gripper"],
            "psnr_copy": report["psnr_copy_baseline"],
            # What the state alone predicts, and what the codes or the motion add to it.
            **{
                f"probe_{dim}_{name}": probe[name][f"r2_{dim}"]
                for name in (
                    "frame_t_16x16",
                    "codes_onehot_plus_frame_t",
                    "pixel_difference_plus_frame_t",
                )
                if name in probe
                for dim in ("xyz", "gripper")
            },
        },
        "psnr": report["psnr"],
        "codes_used_per_position": report["codes_used_per_position"],
        "perplexity_per_position": report["perplexity_per_position"],
        "distinct_actions": report["distinct_actions"],
    }


def run_variant(
    name: str,
    steps: int,
    extra: list[str],
    eval_steps: list[int],
    extend: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains and evaluates one variant. `extend`: its earlier row, whose run this one
    continues from its last checkpoint (resumption is exact); the training times add."""
    desc, overrides = VARIANTS[name]
    workdir = os.path.join(ROOT, "runs", "ablation", name)
    if extend is None and os.path.exists(os.path.join(workdir, "checkpoints")):
        raise FileExistsError(f"{workdir} has checkpoints; remove it to re-run {name}")
    if extend is not None and (
        extend["steps"] >= steps or extend["overrides"] != [*overrides, *extra]
    ):
        raise ValueError(
            f"--extend {name}: needs more steps than {extend['steps']} and the same overrides"
        )
    every = min(eval_steps) if eval_steps else steps
    cmd = [
        sys.executable,
        "-m",
        "lapa_jax.train",
        f"--workdir={workdir}",
        f"--cpu_devices={os.cpu_count()}",
        *overrides,
        *extra,
        f"--config.train.steps={steps}",
        f"--config.train.checkpoint_every={every}",
        "--config.train.keep_checkpoints=5",
        "--config.train.progress_bar=False",
        "--config.train.image_every=0",
    ]
    print("$", " ".join(cmd), flush=True)
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    train_time = time.perf_counter() - t0 + (extend["train_time_s"] if extend else 0.0)
    log = proc.stdout + proc.stderr
    with open(os.path.join(workdir, "train.log"), "w") as f:
        f.write(log)
    if proc.returncode != 0:
        raise RuntimeError(f"training {name} failed:\n{log[-3000:]}")
    alarms = [line for line in log.splitlines() if "codebook collapse?" in line]
    row: dict[str, Any] = {
        "variant": name,
        "description": desc,
        "overrides": [*overrides, *extra],
        "steps": steps,
        "train_time_s": round(train_time, 1),
        "first_collapse_alarm": (extend or {}).get("first_collapse_alarm")
        or (alarms[0] if alarms else None),
        # An extended run keeps the evaluations of its earlier checkpoints (which the
        # new run's keep_checkpoints may have deleted).
        "evals": dict(extend["evals"]) if extend else {},
    }
    from lapa_jax import evaluate_laq

    for s in sorted(set(eval_steps or [steps])):
        report = evaluate_laq.main(["--workdir", workdir, "--step", str(s)])
        earlier = extend["evals"][str(extend["steps"])]["collapse_alarms"] if extend else 0
        row["evals"][str(s)] = summarize(report, _alarms_until(alarms, s) + earlier)
        row["atlas"] = report["atlas"]
    return row


def _alarms_until(alarms: list[str], step: int) -> int:
    n = 0
    for line in alarms:
        try:
            s = int(line.split("WARNING step ")[1].split(":")[0])
        except (IndexError, ValueError):
            continue
        n += s <= step
    return n


def load_rows() -> dict[str, Any]:
    path = os.path.join(OUT, "ablation.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {r["variant"]: r for r in json.load(f)["variants"]}


def save(rows: dict[str, Any]) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import write_result

    write_result(
        os.path.join(OUT, "ablation.json"),
        "laq_ablation",
        {
            "data": "data/metaworld (default build), held-out split val",
            "variants": list(rows.values()),
        },
    )
    with open(os.path.join(OUT, "table.md"), "w") as f:
        f.write(markdown_table(rows))


def markdown_table(rows: dict[str, Any]) -> str:
    head = [
        "variant",
        "steps",
        "train min",
        *[label for _, label in MEASURES],
        "pixel-diff probe xyz / gripper",
        "xyz probe: x_t / codes + x_t / pixel-diff + x_t",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows.values():
        for step, m in r["evals"].items():
            b = m["baselines"]
            cells = [
                r["variant"],
                step,
                f"{r['train_time_s'] * int(step) / r['steps'] / 60:.1f}",
                *[_fmt(m[k]) for k, _ in MEASURES],
                f"{b['probe_xyz_pixel_difference_16x16']:.3f} / {b['probe_gripper_pixel_difference_16x16']:.3f}",
                " / ".join(
                    _fmt(b.get(f"probe_xyz_{n}", "-"))
                    for n in (
                        "frame_t_16x16",
                        "codes_onehot_plus_frame_t",
                        "pixel_difference_plus_frame_t",
                    )
                ),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument(
        "--eval_steps",
        default="",
        help="comma-separated checkpoint steps to evaluate (default: last)",
    )
    p.add_argument("--table", action="store_true", help="only rewrite the markdown table")
    p.add_argument(
        "--extend",
        action="store_true",
        help="continue finished variants' runs to --steps instead of skipping them",
    )
    p.add_argument("extra", nargs="*", help="more --config overrides for every variant")
    args = p.parse_args()
    rows = load_rows()
    if not args.table:
        eval_steps = [int(s) for s in args.eval_steps.split(",") if s]
        for name in args.variants.split(","):
            if name not in VARIANTS:
                raise SystemExit(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
            if name in rows and not args.extend:
                print(f"{name}: already in the table, skipping")
                continue
            previous = rows.get(name) if args.extend else None
            row = run_variant(name, args.steps, args.extra, eval_steps, previous)
            # A run takes many minutes: re-read the table so rows written meanwhile stay.
            rows = {**load_rows(), name: row}
            save(rows)
    save(rows)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
