#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install, then the reduced LAPA experiment
# on Meta-World (experiments/metaworld_lapa.py:demo, 3 tasks): build the video set and
# the demonstrations, train the latent action quantizer and report it beside its
# baselines, label the videos with latent actions, latent-pretrain the VLM, finetune
# it (LAPA) and a fresh one (scratch) on 10 demonstrations per task, evaluate both
# closed loop, and print the table with the paths of the images it wrote.
# Re-running skips finished jobs and resumes an interrupted one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}" TF_CPP_MIN_LOG_LEVEL=2
WORKDIR="${WORKDIR:-runs/demo}"
.venv/bin/python -m lapa_jax.metaworld_experiment --config experiments/metaworld_lapa.py:demo \
  --workdir "$WORKDIR" --echo "$@"
