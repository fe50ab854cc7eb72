#!/bin/bash
# Is action_pretrained's k=5 result (0.33) robust to the pretraining seed? One replicate.
set -e
cd "$(dirname "$0")/../../../.."  # the repository root
export MUJOCO_GL=egl TF_CPP_MIN_LOG_LEVEL=2
R=runs/metaworld_lapa
M="--config.head=chunked --config.model.depth=3 --config.model.head_dim=32 --config.model.mlp=512 --config.model.num_heads=4 --config.model.num_kv_heads=2 --config.model.vit_depth=2 --config.model.vit_heads=4 --config.model.vit_mlp=384 --config.model.vit_width=96 --config.model.width=128 --config.data.spec=metaworld --config.data.tokenizer=$R/tokenizer.model"
W=runs/vpt_question
.venv/bin/python -m lapa_jax.train --config experiments/action_finetune.py:metaworld --workdir $W/action_pre_seed1 --cpu_devices 2 $M --config.train.eval_every=1500 --config.train.steps=1500 --config.data.dir=$R/data/video --config.train.seed=1
.venv/bin/python -m lapa_jax.train --config experiments/action_finetune.py:metaworld --workdir $W/ft_action_pre_seed1_k5_s0 --cpu_devices 2 $M --config.execution=receding --config.train.checkpoint_every=500 --config.train.eval_every=500 --config.train.steps=500 --config.data.dir=$R/data/demos_k5 --config.init_from=$W/action_pre_seed1 --config.train.seed=0
.venv/bin/python -m lapa_jax.evaluate_policy --workdir $W/ft_action_pre_seed1_k5_s0 --tasks reach-v3,push-v3,pick-place-v3,door-open-v3,drawer-open-v3,drawer-close-v3,button-press-topdown-v3,peg-insert-side-v3,window-open-v3,window-close-v3 --episodes 20 --seed 0 --max_frames 100 --workers 2 --batch_slots 32 --videos_per_task 0
echo DONE
