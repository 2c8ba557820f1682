#!/usr/bin/env bash
# Reproduces the RAVDESS figures in README (speaker-independent: test actors 21-24).
# Usage: scripts/reproduce_ravdess.sh [RAVDESS_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data/ravdess}
OUT=${2:-runs}
G=.venv/bin/gossipser
TEST=21,22,23,24
mkdir -p "$OUT"
# centralized baselines (issue 2)
for m in cnn dnn lstm; do
  $G train --data "$DATA" --model $m --test-speakers $TEST --seed 0 --out "$OUT/ravdess-$m"
done
# gossip on 20 single-speaker peers, CNN (issue 3)
SIM=(simulate --data "$DATA" --model cnn --test-speakers $TEST --seed 0 --rounds 100
     --local-epochs 2 --eval-every 5 --display plain)
$G "${SIM[@]}" --algorithm dpsgd --topology ring --out "$OUT/sim-dpsgd-ring"
$G "${SIM[@]}" --algorithm dpsgd --topology regular:4 --out "$OUT/sim-dpsgd-regular4"
$G "${SIM[@]}" --algorithm gossip-learning --topology regular:4 --out "$OUT/sim-gossip-learning"
$G "${SIM[@]}" --algorithm fedavg --out "$OUT/sim-fedavg"
$G "${SIM[@]}" --algorithm local --out "$OUT/sim-local"
