#!/bin/bash
# Does LAPA still beat scratch when both finetune for 2,000 steps?
source "$(dirname "$0")/common.sh"
finetune_and_evaluate runs/scratch_question/ft_lapa2000_k5_s0 $R/runs/latent_all 2000 0
