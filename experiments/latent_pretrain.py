"""Latent pretraining (stage 2). Variants: tiny, metaworld, 1b, 7b.

    python -m lapa_jax.train --config experiments/latent_pretrain.py:metaworld \
        --workdir runs/latent --config.data.dir=data/metaworld_latent \
        --config.data.tokenizer=data/tokenizer.model

Data: a dataset written by data_pipelines.label_latent_actions (its lapa_spec.json
names the latent action key) and a sentencepiece model (data_pipelines.train_tokenizer,
or any existing .model file). `tiny` is for tests; `metaworld` trains on this CPU;
`1b` and `7b` are pod / GPU-mesh configurations (scanned, rematerialized, bf16, FSDP
plus tensor parallelism), checked here only by shape.
"""

from __future__ import annotations

import ml_collections

from experiments import common

VARIANTS = ("tiny", "metaworld", "1b", "7b")


def get_config(variant: str = "metaworld") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown latent_pretrain variant {variant!r}; choose one of {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.task = "latent_pretrain"
    c.variant = variant

    c.data = ml_collections.ConfigDict()
    c.data.dir = "data/metaworld_latent"
    c.data.spec = "data/metaworld_latent/lapa_spec.json"
    c.data.tokenizer = "data/tokenizer.model"
    # An npz of latent codes per episode to train on instead of the dataset's labels
    # (data_pipelines.label_oracle_latents); the dataset then needs no latent labels.
    c.data.latent_labels = ""
    # Train on the first N tokens of each latent action only (0: all of them). For a
    # residual quantizer these are its coarsest stages, the part of the motion the
    # current frame and instruction can predict (results/metaworld_lapa, lapa_rvq16).
    c.data.latent_tokens = 0
    c.data.split = "train"
    c.data.eval_split = "val"
    c.data.image_size = 64
    c.data.resize_mode = "crop"
    c.data.worker_count = 0
    c.data.read_threads = 2

    c.model = ml_collections.ConfigDict(
        dict(
            image_size=64,
            patch_size=8,
            channels=3,
            vit_width=128,
            vit_depth=2,
            vit_heads=4,
            vit_mlp=512,
            width=256,
            depth=4,
            num_heads=4,
            num_kv_heads=2,
            head_dim=64,
            mlp=1024,
            vocab_size=0,  # 0: the tokenizer's
            max_text_len=24,
            num_latent_tokens=4,
            latent_codes=8,
            rope_base=10_000.0,
            freeze_vision=False,
            scan_layers=False,
            remat=False,
            dtype="bfloat16",
        )
    )
    # Pretrained weights for a run that starts from scratch: a run folder of ours, or a
    # PaliGemma .npz in big_vision's layout (see lapa_jax/pretrained.py), per part.
    c.init = ml_collections.ConfigDict(dict(vision_from="", language_from="", step=-1))
    c.text_loss_weight = 0.0  # the paper adds a tiny text loss; off by default

    # The paper: AdamW, lr 2e-5 constant (a pretrained 7B model). From scratch on small
    # data a larger, decaying rate works better.
    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="adamw",
            lr=3e-4,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.01,
            grad_clip=1.0,
            schedule="cosine",
            warmup_steps=100,
            final_lr_fraction=0.1,
            frozen=[],  # top-level parameter names, e.g. ["vision"]
            trainable=[],  # if set, only parameters whose path matches one (re.search)
        )
    )
    # LoRA (lapa_jax.lora): rank > 0 adds adapters to the language model and trains
    # only them and the head, the base frozen; the adapter is saved in WORKDIR/adapter.
    c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0))
    c.train = common.train_config(eval_every=500)
    c.eval_max_steps = 512
    c.eval_batch_size = 64
    common.add_mesh(c)

    if variant == "metaworld":
        # 0: the layout of the labels trained on (data_pipelines.label_latent_actions
        # records its quantizer's tokens and codes; an oracle npz its bins), so this
        # follows whatever quantizer labelled the data (lapa_jax.tasks.latent_pretrain).
        c.model.num_latent_tokens = 0
        c.model.latent_codes = 0
    if variant == "tiny":
        c.data.image_size = 16
        c.model.update(
            dict(
                image_size=16,
                patch_size=4,
                vit_width=32,
                vit_depth=1,
                vit_heads=2,
                vit_mlp=64,
                width=32,
                depth=2,
                num_heads=4,
                num_kv_heads=2,
                head_dim=8,
                mlp=64,
                max_text_len=16,
                dtype="float32",
            )
        )
        c.optimizer.update(dict(lr=3e-3, warmup_steps=2))
        c.train.update(common.tiny_train(checkpoint_every=3))
        c.eval_max_steps = 16
        c.eval_batch_size = 8
    elif variant in ("1b", "7b"):
        c.data.image_size = 224
        c.model.update(dict(image_size=224, patch_size=14, scan_layers=True, remat=True))
        c.model.max_text_len = 64
        c.optimizer.update(dict(lr=2e-5, schedule="constant", warmup_steps=500))
        c.train.update(dict(steps=70_000, batch_size=256, eval_every=5000, checkpoint_every=2000))
        c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
        if variant == "1b":  # ViT-B/14 + a Gemma-2B-like decoder, 12 layers
            c.model.update(
                dict(
                    vit_width=768,
                    vit_depth=12,
                    vit_heads=12,
                    vit_mlp=3072,
                    width=2048,
                    depth=12,
                    num_heads=8,
                    num_kv_heads=1,
                    head_dim=256,
                    mlp=8192,
                    vocab_size=32_000,
                )
            )
        else:  # a So400m-sized ViT + a LLaMA/Mistral-7B-like decoder with GQA
            c.model.update(
                dict(
                    vit_width=1152,
                    vit_depth=27,
                    vit_heads=16,
                    vit_mlp=4304,
                    width=4096,
                    depth=32,
                    num_heads=32,
                    num_kv_heads=8,
                    head_dim=128,
                    mlp=14336,
                    vocab_size=32_000,
                )
            )
    return c
