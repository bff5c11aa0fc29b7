#!/usr/bin/env bash
# Retrain the two bundled tiny segmentation models (baseline and TAP & ADL) and install them into models/.
#
#   bash scripts/make_demo_seg_models.sh            # both runs at once, one CPU thread each
#   THREADS=2 bash scripts/make_demo_seg_models.sh
#
# A 0.4 M-parameter FAN-Hybrid / TAP-FAN-Hybrid (4 blocks, 64 channels, 4 heads, token stride 8) + SegFormer head,
# trained by the plain `attnprobe train` command recorded in each card (models/demo_seg_*.toml) on the synthetic
# street scenes (64 x 128, random 64 x 64 crops): pixel CE + lambda * ADL (lambda = 1 for TAP & ADL). Runs are
# resumable (rerun this script after an interruption). Weights land in models/demo/ (float16, about 0.8 MB each).
# A few minutes per model on one CPU core.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-.venv/bin/python}"
threads="${THREADS:-1}"
runs="${RUNS_DIR:-runs/demo_seg}"
common=(--epochs "${EPOCHS:-8}" --train-images 800 --val-images 100 --batch-size 16 --lr 2e-3 --seed 0
        --model-arg embed_dim=64 --model-arg depth=4 --model-arg num_heads=4
        --model-arg 'backbone={"depths": [1, 1], "dims": [16, 32, 64, 128]}'
        --model-arg decoder_embed_dim=64 --model-arg head_channels=32 --model-arg hybrid_patch_size=1)

train_one() {  # name, extra options...
  local name="$1"; shift
  local resume=()
  if [ -f "$runs/$name/checkpoint.pt" ]; then resume=(--resume); fi  # continue an interrupted run
  "$py" -m attnprobe train "${common[@]}" "$@" --name "$name" --out "$runs/$name" --threads "$threads" \
    "${resume[@]}" --quiet > "$runs/$name.out" 2>&1
  echo "trained $name"
}

mkdir -p "$runs"
train_one demo_seg_tapadl --arch segformer_tap_fan_base_16_p4_hybrid --tap 4 --adl-weight 1 --adl-tau 2 &
train_one demo_seg_baseline --arch segformer_fan_base_16_p4_hybrid &
wait

for name in demo_seg_baseline demo_seg_tapadl; do
  "$py" -c "from attnprobe.train import install_model; print(install_model('$runs/$name', 'models', half=True))"
done
