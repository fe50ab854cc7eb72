# Sourced by the check scripts here: the experiment's model, data and evaluation flags
# (experiments/metaworld_lapa.py:full), run from the repository root.
set -e
cd "$(dirname "${BASH_SOURCE[0]}")/../../../.."
export MUJOCO_GL=egl TF_CPP_MIN_LOG_LEVEL=2
R=runs/metaworld_lapa
PY=.venv/bin/python
M="--config.head=chunked --config.model.depth=3 --config.model.head_dim=32 --config.model.mlp=512 --config.model.num_heads=4 --config.model.num_kv_heads=2 --config.model.vit_depth=2 --config.model.vit_heads=4 --config.model.vit_mlp=384 --config.model.vit_width=96 --config.model.width=128 --config.data.spec=metaworld --config.data.tokenizer=$R/tokenizer.model"
TASKS=reach-v3,push-v3,pick-place-v3,door-open-v3,drawer-open-v3,drawer-close-v3,button-press-topdown-v3,peg-insert-side-v3,window-open-v3,window-close-v3

# pretrain WORKDIR [overrides...]: 1,500 steps on the video set.
pretrain() {
    local w=$1; shift
    $PY -m lapa_jax.train --config experiments/action_finetune.py:metaworld --workdir "$w" \
        --cpu_devices 2 $M --config.train.eval_every=1500 --config.train.steps=1500 \
        --config.data.dir=$R/data/video "$@"
}

# finetune_and_evaluate WORKDIR INIT_FROM STEPS SEED: on the k=5 demonstrations, then
# 20 closed-loop episodes per task with the evaluation layouts of SEED.
finetune_and_evaluate() {
    local w=$1 init=$2 steps=$3 seed=$4
    $PY -m lapa_jax.train --config experiments/action_finetune.py:metaworld --workdir "$w" \
        --cpu_devices 2 $M --config.execution=receding --config.train.checkpoint_every=500 \
        --config.train.eval_every=500 --config.train.steps="$steps" \
        --config.data.dir=$R/data/demos_k5 --config.init_from="$init" --config.train.seed="$seed"
    $PY -m lapa_jax.evaluate_policy --workdir "$w" --tasks $TASKS --episodes 20 --seed "$seed" \
        --max_frames 100 --workers 2 --batch_slots 32 --videos_per_task 0
}
