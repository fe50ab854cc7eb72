"""Action finetuning (stage 3). Variants: tiny, metaworld.

    python -m lapa_jax.train --config experiments/action_finetune.py:metaworld \
        --workdir runs/finetune --config.init_from=runs/latent   # LAPA
    ... --config.init_from=                                        # from scratch

The model is stage 2's VLM (the same variant sizes), its latent head replaced by the
binned action head: one token per action dimension, `num_bins` bins at the quantiles
of the finetuning data (the gripper binary). The bins are fitted when the run starts
and saved in its config.json (`action_bins`), which the policy reads back.
"""

from __future__ import annotations

import ml_collections

from experiments import latent_pretrain

VARIANTS = ("tiny", "metaworld")


def get_config(variant: str = "metaworld") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown action_finetune variant {variant!r}; choose one of {VARIANTS}")
    c = latent_pretrain.get_config(variant)
    c.task = "action_finetune"
    c.data.dir = "data/metaworld"
    c.data.spec = "metaworld"
    c.head = "binned"
    c.num_bins = 256
    # Binary open/close gripper (the paper's, kept by tiny); Meta-World's experts grade
    # the gripper effort (binary loses a third of its variance), so bin it like the rest.
    c.binary_gripper = variant != "metaworld"
    c.init_from = ""  # a latent-pretraining run (LAPA), an action-pretrained run, or scratch
    c.action_bins = ""  # filled when the run starts (JSON), kept in config.json
    if variant == "metaworld":
        c.train.update(dict(steps=1000, eval_every=500, checkpoint_every=500))
    return c
