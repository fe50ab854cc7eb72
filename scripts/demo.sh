#!/usr/bin/env bash
# The main job, end to end on the bundled default data: install; build the default
# Meta-World dataset (6 tasks x 40 expert episodes + 8 held-out per task, 64x64) into
# data/metaworld; train the latent action quantizer for a short run (the `metaworld`
# variant, the issue-8 recipe, 1200 steps, about 7 minutes on 2 cores); evaluate it
# beside the baselines; label the dataset with its latent actions (data/metaworld_latent);
# train a tokenizer and pretrain the vision-language model on the latent labels.
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
  echo "[demo] 1/5 building the default Meta-World dataset in $DATA"
  .venv/bin/python -m data_pipelines.metaworld_rlds --out "$DATA"
fi
.venv/bin/python -m data_pipelines.compute_statistics --data_dir "$DATA" --spec metaworld | tail -5
echo "[demo] 2/5 training the latent action quantizer ($STEPS steps) in $RUN"
.venv/bin/python -m lapa_jax.train --config experiments/laq.py:metaworld --workdir "$RUN" \
  --cpu_devices "$CPUS" --config.data.dir="$DATA" --config.train.steps="$STEPS" \
  --config.train.image_every=400 --config.train.checkpoint_every=400
echo "[demo] 3/5 evaluating the quantizer on held-out episodes"
.venv/bin/python -m lapa_jax.evaluate_laq --workdir "$RUN" --max_pairs 1000
LABELLED="${LABELLED:-${DATA}_latent}"
echo "[demo] 4/5 labelling $DATA with the quantizer's latent actions into $LABELLED"
.venv/bin/python -m data_pipelines.label_latent_actions --src "$DATA" --spec metaworld \
  --laq_workdir "$RUN" --dst "$LABELLED"
TOKENIZER="${TOKENIZER:-data/tokenizer.model}"
LATENT_RUN="${LATENT_RUN:-runs/demo_latent}"
LP_STEPS="${LP_STEPS:-800}"
echo "[demo] 5/5 latent pretraining (stage 2, $LP_STEPS steps) on $LABELLED in $LATENT_RUN"
if [ ! -f "$TOKENIZER" ]; then
  .venv/bin/python -m data_pipelines.train_tokenizer --data "$LABELLED" \
    --spec "$LABELLED/lapa_spec.json" --out "$TOKENIZER"
fi
.venv/bin/python -m lapa_jax.train --config experiments/latent_pretrain.py:metaworld \
  --workdir "$LATENT_RUN" --cpu_devices "$CPUS" --config.data.dir="$LABELLED" \
  --config.data.spec="$LABELLED/lapa_spec.json" --config.data.tokenizer="$TOKENIZER" \
  --config.train.steps="$LP_STEPS" --config.train.eval_every="$LP_STEPS" \
  --config.train.checkpoint_every="$LP_STEPS"
.venv/bin/python - "$LATENT_RUN" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
ev = [r for r in rows if "eval_latent_accuracy" in r][-1]
print(f"[demo] held-out latent accuracy {ev['eval_latent_accuracy']:.3f} "
      f"(majority class {ev['eval_majority_latent_accuracy']:.3f}); whole 4-token action "
      f"{ev['eval_action_accuracy']:.3f} (majority {ev['eval_majority_action_accuracy']:.3f}); "
      f"{ev['eval_predicted_distinct_actions']:.0f} distinct actions predicted")
PY
echo "[demo] reconstructions: $(ls "$RUN"/images/*.png | tail -1)"
echo "[demo] atlas: $(ls "$RUN"/eval/atlas_*.png | tail -1)"
