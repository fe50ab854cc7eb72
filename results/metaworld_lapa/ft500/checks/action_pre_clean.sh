#!/bin/bash
# Pretraining on the true actions without their noise: does it match VPT (0.45 at k=5)?
# (Now the action_pretrained_clean arm of the experiment; this was its first check.)
source "$(dirname "$0")/common.sh"
W=runs/vpt_question
[ -f $W/clean_video.npz ] || $PY -m data_pipelines.label_expert_actions --src $R/data/video --out $W/clean_video.npz
pretrain $W/action_pre_clean --config.data.action_labels=$W/clean_video.npz
finetune_and_evaluate $W/ft_action_pre_clean_k5_s0 $W/action_pre_clean 500 0
