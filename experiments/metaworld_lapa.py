"""The LAPA experiment on Meta-World MT10. Variants: full, demo, tiny.

    python -m lapa_jax.metaworld_experiment --config experiments/metaworld_lapa.py:full \
        --workdir runs/metaworld_lapa [--results results/metaworld_lapa]

Does latent pretraining on action-free video help a policy finetuned on a few
demonstrations? Arms (each finetuned on k labelled demonstrations per task, then
evaluated closed loop on every task):
- scratch: finetuning only;
- scratch_long (opt-in): finetuning only, for as many steps as pretraining and
  finetuning together (the compute-matched control);
- lapa: quantizer on the video set, latent labels, latent pretraining, finetuning;
- action_pretrained: pretraining on the video set's true actions (an upper bound);
- action_pretrained_clean: the same on the scripted expert's actions without the
  recorder's N(0, 0.1) noise (data_pipelines/label_expert_actions.py);
- lapa_transfer: quantizer and latent pretraining on the videos of the other half of
  the tasks only, finetuned and evaluated on the held-out half (each half in turn);
- scratch_half: lapa_transfer's control, finetuned from scratch on the same half of the
  tasks. A policy for 5 tasks gets twice the steps per task of one for 10, so
  lapa_transfer is compared with this arm, not with scratch; scratch_half_long
  (opt-in) is the same for as many steps as pretraining and finetuning together;
- lapa_oracle (opt-in diagnostic): latent pretraining on the true actions summed over
  the quantizer's frame gap and binned into its layout (4 tokens of 8 codes), then
  finetuning: LAPA with latents that carry the action;
- lapa_rvq16 (opt-in): lapa with issue 8's quantizer (laq_rvq16: 16 residual stages of
  8 codes on a 128-d latent, half the decoder's x_t patches hidden, EMA codebooks)
  in place of the full run's 4 x 8 codes; everything after the quantizer as in lapa;
- lapa_rvq16_first4 (opt-in): lapa_rvq16's quantizer and labels, latent pretraining
  on the first 4 of the 16 stages only (data.latent_tokens), finetuning as in lapa;
- vpt: an inverse dynamics model trained on the k demonstrations pseudo-labels the
  video set; the policy pretrains on those labels, then finetunes.
Every arm finetunes for 2,000 steps. 500 steps (the first protocol) left every
arm short of convergence: from scratch the training loss sat on a plateau at 0.58,
while at 2,000 steps the held-out action error is flat from 1,500 steps on, from
scratch and from LAPA alike (k=5). The *_long controls and lapa_oracle are opt-in
(--config.arms=...): the first answer whether pretraining is more than extra steps,
the second whether the quantizer is what holds LAPA back.
The video set and the demonstrations are disjoint (different seed families); the
demonstration sets are nested (k=5 within k=10 within k=25) and share one held-out
split. Pretraining runs are shared by the seeds; seeds vary finetuning and the
evaluation layouts (the same layouts for every arm).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from lapa_jax.metaworld_experiment import KNOWN_ARMS, OPT_IN_ARMS

MT10 = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
ARMS = tuple(a for a in KNOWN_ARMS if a not in OPT_IN_ARMS)  # the driver's, less opt-ins
VARIANTS = ("full", "demo", "tiny")

# One VLM size for every pretraining and finetuning run (LAPA loads the latent run's
# backbone into the policy, so they must match): ~1.1M parameters, a few times cheaper
# per step than latent_pretrain.py:metaworld.
SMALL_VLM = dict(
    vit_width=96,
    vit_depth=2,
    vit_heads=4,
    vit_mlp=384,
    width=128,
    depth=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    mlp=512,
)


# lapa_rvq16's quantizer model: 16 tokens (residual stages) of 8 codes on a 128-d latent,
# half of the decoder's x_t patches hidden in training.
RVQ16_MODEL = dict(num_latent_tokens=16, latent_dim=128, decoder_mask_ratio=0.5)


def stage(config: str, **overrides: Any) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(config=config, overrides=overrides))


def get_config(variant: str = "full") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown metaworld_lapa variant {variant!r}; choose one of {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.tasks = list(MT10)
    c.arms = tuple(ARMS)  # a tuple, so --config.arms="(a, b)" can pick a subset
    c.video_episodes_per_task = 100
    c.video_val_episodes_per_task = 4
    c.demo_ks = (5, 10, 25)  # tuples, so --config.seeds="(2,)" can pick a subset
    c.demo_val_episodes_per_task = 4
    c.video_seed = 100  # the dataset seed families: disjoint layouts
    c.demo_seed = 200
    c.seeds = (0, 1, 2)
    c.eval_episodes = 20  # per task per seed
    c.eval_max_frames = 100
    c.eval_batch_slots = 32
    c.workers = 2  # rendering processes
    c.cpu_devices = 2
    c.tokenizer_vocab = 512
    c.oracle_frame_gap = 4  # lapa_oracle's: the quantizer's (experiments/laq.py:metaworld)
    # Each stage: a config file:variant and overrides that mirror its structure (passed
    # as --config.KEY=VALUE); the driver adds the data paths and init_from.
    small_vlm = {"model": dict(SMALL_VLM)}
    c.laq = stage("experiments/laq.py:metaworld", train={"steps": 1200})
    # lapa_rvq16's quantizer: issue 8's recipe as experiments/laq.py:metaworld had it
    # when the arm was added, pinned so a later default does not change what it names.
    c.laq_rvq16 = stage(
        "experiments/laq.py:metaworld",
        train={"steps": 1200},
        model=dict(RVQ16_MODEL),
        codebook_ema=0.99,
    )
    c.latent = stage(
        "experiments/latent_pretrain.py:metaworld",
        **small_vlm,
        train={"steps": 1500, "eval_every": 1500},
    )
    c.action_pretrain = stage(
        "experiments/action_finetune.py:metaworld",
        **small_vlm,
        head="chunked",
        train={"steps": 1500, "eval_every": 1500},
    )
    c.idm = stage("experiments/idm.py:metaworld", train={"steps": 800})
    c.finetune = stage(
        "experiments/action_finetune.py:metaworld",
        **small_vlm,
        head="chunked",
        execution="receding",
        train={"steps": 2000, "eval_every": 500, "checkpoint_every": 500},
    )
    if variant == "demo":  # the README's one command: about 15 minutes on 2 cores
        c.tasks = ["reach-v3", "drawer-open-v3", "button-press-topdown-v3"]
        c.arms = ["scratch", "lapa"]
        c.video_episodes_per_task = 30
        c.demo_ks = (10,)
        c.seeds = (0,)
        c.eval_episodes = 10
        c.eval_max_frames = 60
        c.laq.overrides.train.steps = 600
        c.latent.overrides.train.update(dict(steps=500, eval_every=500))
        # The current quantizer has 16 residual stages; stage 2 learns the first 4 only,
        # which beat all 16 in the full experiment (lapa_rvq16_first4 against lapa_rvq16).
        c.latent.overrides.data = {"latent_tokens": 4}
        c.finetune.overrides.train.update(dict(steps=800, eval_every=800, checkpoint_every=800))
    if variant == "full":
        # The full experiment's quantizers were trained before the laq default hid half of
        # the decoder's x_t patches (results/laq_ablation, rvq_mask): pinned to what ran.
        # ... and before its codebooks followed their clusters (rvq_mask_ema), and before it
        # had 16 tokens per action on a 128-d latent (rvq_mask_ema_t16_d128).
        c.laq.overrides.model = {
            "decoder_mask_ratio": 0.0,
            "num_latent_tokens": 4,
            "latent_dim": 32,
        }
        c.laq.overrides.codebook_ema = 0.0
    if variant == "tiny":  # tests: every arm and job, minutes on 2 cores
        c.tasks = ["reach-v3", "button-press-topdown-v3"]
        c.video_episodes_per_task = 2
        c.video_val_episodes_per_task = 1
        c.demo_ks = (1,)
        c.demo_val_episodes_per_task = 1
        c.seeds = (0,)
        c.eval_episodes = 1
        c.eval_max_frames = 3
        c.eval_batch_slots = 2
        c.workers = 1
        c.tokenizer_vocab = 300
        tiny = {"steps": 2, "batch_size": 8, "log_every": 1}
        every = {**tiny, "eval_every": 2, "checkpoint_every": 2}
        c.laq = stage("experiments/laq.py:tiny", train={**tiny, "image_every": 0})
        c.laq_rvq16 = stage(
            "experiments/laq.py:tiny",
            train={**tiny, "image_every": 0},
            model={"num_latent_tokens": 16},
            codebook_ema=0.99,
        )
        c.latent = stage("experiments/latent_pretrain.py:tiny", train=every)
        c.action_pretrain = stage(
            "experiments/action_finetune.py:tiny", head="chunked", train=every
        )
        c.idm = stage("experiments/idm.py:tiny", train=tiny)
        c.finetune = stage(
            "experiments/action_finetune.py:tiny", head="chunked", execution="receding", train=every
        )
    return c
