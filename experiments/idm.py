"""Inverse dynamics model (the LAPA experiment's VPT-style baseline). Variants: tiny, metaworld.

    python -m lapa_jax.train --config experiments/idm.py:metaworld --workdir runs/idm \
        --config.data.dir=data/metaworld_demos
    python -m data_pipelines.label_idm_actions --idm_workdir runs/idm --src data/videos \
        --spec metaworld --out runs/idm/video_actions.npz

Trained on action-labelled frame pairs (x_t, x_{t+1}); its predictions on action-free
videos then stand in for their actions (`data.action_labels` of stage 3).
"""

from __future__ import annotations

import ml_collections

from experiments import common

VARIANTS = ("tiny", "metaworld")


def get_config(variant: str = "metaworld") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown idm variant {variant!r}; choose one of {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.task = "idm"
    c.data = ml_collections.ConfigDict(
        dict(
            dir="data/metaworld",
            spec="metaworld",
            split="train",
            eval_split="val",
            image_size=64,
            resize_mode="crop",
            worker_count=0,
            read_threads=2,
        )
    )
    c.model = ml_collections.ConfigDict(dict(image_size=64, channels=[32, 64, 128, 128], mlp=256))
    c.action_stats = ""  # the train split's action mean and std (JSON), saved at the start
    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="adamw",
            lr=1e-3,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=1e-4,
            grad_clip=1.0,
            schedule="cosine",
            warmup_steps=50,
            final_lr_fraction=0.05,
            frozen=[],
            trainable=[],
        )
    )
    c.train = common.train_config(steps=1500, batch_size=64, eval_every=500, keep_checkpoints=2)
    c.eval_max_steps = 1024
    common.add_mesh(c)
    if variant == "tiny":
        c.data.image_size = 16
        c.model.update(dict(image_size=16, channels=[8, 16], mlp=32))
        c.optimizer.update(dict(lr=3e-3, warmup_steps=2))
        c.eval_max_steps = 64
        c.train.update(common.tiny_train())
    return c
