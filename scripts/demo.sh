#!/usr/bin/env bash
# The main job, end to end on the bundled default data: install; build the default
# Meta-World dataset (6 tasks x 40 expert episodes + 8 held-out per task, 64x64) into
# data/metaworld; train the latent action quantizer for a short run (the `metaworld`
# variant, the issue-8 recipe, 1200 steps, about 7 minutes on 2 cores); evaluate it
# beside the baselines; label the dataset with its latent actions (data/metaworld_latent).
# Re-running reuses the dataset and resumes (or skips) the finished run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}" TF_CPP_MIN_LOG_LEVEL=2
DATA="${DATA:-data/metaworld}"
RUN="${RUN:-runs/demo_laq}"
STEPS="${STEPS:-1200}"
CPUS="$(nproc)"
if [ -f "$DATA/dataset_info.json" ]; then
  echo "[demo] $DATA exists; reusing it (delete it to rebuild)"
else
  echo "[demo] 1/4 building the default Meta-World dataset in $DATA"
  .venv/bin/python -m data_pipelines.metaworld_rlds --out "$DATA"
fi
.venv/bin/python -m data_pipelines.compute_statistics --data_dir "$DATA" --spec metaworld | tail -5
echo "[demo] 2/4 training the latent action quantizer ($STEPS steps) in $RUN"
.venv/bin/python -m lapa_jax.train --config experiments/laq.py:metaworld --workdir "$RUN" \
  --cpu_devices "$CPUS" --config.data.dir="$DATA" --config.train.steps="$STEPS" \
  --config.train.image_every=400 --config.train.checkpoint_every=400
echo "[demo] 3/4 evaluating the quantizer on held-out episodes"
.venv/bin/python -m lapa_jax.evaluate_laq --workdir "$RUN" --max_pairs 1000
LABELLED="${LABELLED:-${DATA}_latent}"
echo "[demo] 4/4 labelling $DATA with the quantizer's latent actions into $LABELLED"
.venv/bin/python -m data_pipelines.label_latent_actions --src "$DATA" --spec metaworld \
  --laq_workdir "$RUN" --dst "$LABELLED"
echo "[demo] reconstructions: $(ls "$RUN"/images/*.png | tail -1)"
