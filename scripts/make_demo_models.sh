#!/usr/bin/env bash
# Retrain the bundled demo models (baseline, +TAP, +ADL, +TAP & ADL, and +TAP with K = 2, 3 for Fig. 7) and install
# them into models/.
#
#   bash scripts/make_demo_models.sh            # two runs at a time, one CPU thread each
#   JOBS=4 THREADS=2 bash scripts/make_demo_models.sh
#
# Each run is the plain `attnprobe train` command recorded in its card (models/demo_vit_*.toml); runs are resumable
# (rerun this script after an interruption). Weights land in models/demo/ (float16 safetensors, about 0.4 MB each).
# About 40 CPU-minutes in all on a 2-core machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-.venv/bin/python}"
jobs="${JOBS:-2}"
threads="${THREADS:-1}"
runs="${RUNS_DIR:-runs/demo}"
# Shared recipe of the four models: only --tap and --adl-weight differ.
common=(--epochs "${EPOCHS:-12}" --train-images 5000 --val-images 1000 --batch-size 64 --lr 2e-3 --seed 0)

train_one() {  # name, extra options...
  local name="$1"; shift
  "$py" -m attnprobe train "${common[@]}" "$@" --name "$name" --out "$runs/$name" --threads "$threads" --resume \
    --quiet > "$runs/$name.out" 2>&1
  echo "trained $name"
}

mkdir -p "$runs"
# Slowest first, so that two parallel jobs finish at about the same time.
declare -a specs=(
  "demo_vit_tapadl --tap 4 --adl-weight 1 --adl-tau 2"
  "demo_vit_adl --adl-weight 1 --adl-tau 2"
  "demo_vit_tap --tap 4"
  "demo_vit_baseline"
  "demo_vit_tap_k3 --tap 3"   # the K sweep of Fig. 7 (K = 4 is demo_vit_tap)
  "demo_vit_tap_k2 --tap 2"
)
running=0
for spec in "${specs[@]}"; do
  # shellcheck disable=SC2086
  train_one $spec &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

for spec in "${specs[@]}"; do
  name="${spec%% *}"
  "$py" -c "from attnprobe.train import install_model; print(install_model('$runs/$name', 'models', half=True))"
done
