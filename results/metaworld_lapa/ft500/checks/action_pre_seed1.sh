#!/bin/bash
# Is action_pretrained's k=5 result (0.33) robust to the pretraining seed? One replicate.
source "$(dirname "$0")/common.sh"
pretrain runs/vpt_question/action_pre_seed1 --config.train.seed=1
finetune_and_evaluate runs/vpt_question/ft_action_pre_seed1_k5_s0 runs/vpt_question/action_pre_seed1 500 0
