#!/usr/bin/env bash
# The main job, end to end on the bundled default data: install, then build the default
# Meta-World dataset (6 tasks x 40 expert episodes + 8 held-out per task, 64x64) into
# data/metaworld. Later stages (quantizer, labelling, pretraining, finetuning) are
# appended here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}" TF_CPP_MIN_LOG_LEVEL=2
DATA="${DATA:-data/metaworld}"
if [ -f "$DATA/dataset_info.json" ]; then
  echo "[demo] $DATA exists; reusing it (delete it to rebuild)"
else
  echo "[demo] building the default Meta-World dataset in $DATA"
  .venv/bin/python -m data_pipelines.metaworld_rlds --out "$DATA"
fi
.venv/bin/python -m data_pipelines.compute_statistics --data_dir "$DATA" --spec metaworld
