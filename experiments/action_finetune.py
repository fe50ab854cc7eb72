"""Action finetuning (stage 3). Variants: tiny, metaworld.

    python -m lapa_jax.train --config experiments/action_finetune.py:metaworld \
        --workdir runs/finetune --config.init_from=runs/latent   # LAPA
    ... --config.init_from=                                        # from scratch

The model is stage 2's VLM (the same variant sizes), its latent head replaced by an
action head (lapa_jax.action_heads):
- `head=binned` (default, the paper's): one token per action dimension, `num_bins`
  bins at the quantiles of the finetuning data (the gripper binary unless
  `binary_gripper=False`); bins saved in config.json (`action_bins`);
- `--config.head=chunked`: the next `chunk_size` actions, normalized with the train
  split's statistics (saved as `action_stats`), L1 loss; evaluation executes chunks
  with `execution` (receding horizon or temporal ensembling).
LoRA: `--config.lora.rank=8` trains low-rank adapters on the language model's
projections with the base frozen (lapa_jax.lora).
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
    # The action head sets the positions (binned: one per action dimension, with its
    # bins as codes; chunked: one per future step), not the latent labels' layout.
    c.model.num_latent_tokens = 4
    c.model.latent_codes = 8
    c.data.dir = "data/metaworld"
    c.data.spec = "metaworld"
    # An npz of per-episode actions (data_pipelines.label_idm_actions) used in place of
    # the dataset's own: pretraining on pseudo-labelled video (the VPT-style baseline).
    c.data.action_labels = ""
    c.head = "binned"  # or "chunked": the next chunk_size actions, L1, one pass
    c.num_bins = 256
    # Binary open/close gripper (the paper's, kept by tiny); Meta-World's experts grade
    # the gripper effort (binary loses a third of its variance), so bin it like the rest.
    c.binary_gripper = variant != "metaworld"
    c.init_from = ""  # a latent-pretraining run (LAPA), an action-pretrained run, or scratch
    c.chunk_size = 4  # chunked head: actions per prediction
    c.execution = "receding"  # chunked head's default in evaluation: receding | ensemble
    c.action_bins = ""  # binned head: filled when the run starts (JSON), kept in config.json
    c.action_stats = ""  # chunked head: the train split's action mean and std (JSON)
    if variant == "metaworld":
        c.train.update(dict(steps=1000, eval_every=500, checkpoint_every=500))
    return c
