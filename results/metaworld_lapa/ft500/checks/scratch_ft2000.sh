#!/bin/bash
# Is scratch's 0.11 an undertrained policy? The same finetune for 2,000 steps, as many
# as a pretrained arm sees in all (1,500 + 500): the scratch_long arm.
source "$(dirname "$0")/common.sh"
finetune_and_evaluate runs/scratch_question/ft_scratch2000_k5_s0 "" 2000 0
