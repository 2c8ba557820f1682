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
# gossip vs FedAvg vs centralized on 20 single-speaker peers, CNN (issues 3 and 5)
C=(.venv/bin/python scripts/compare_convergence.py --data "$DATA" --rounds 100 --local-epochs 2
   --eval-every 10 --test-speakers $TEST)
"${C[@]}" --seeds 0 --out "$OUT/compare-ravdess"
"${C[@]}" --seeds 1,2 --out "$OUT/compare-ravdess-s12"
.venv/bin/python scripts/compare_convergence.py --merge "$OUT/compare-ravdess" \
  "$OUT/compare-ravdess-s12" --out "$OUT/compare-ravdess-3seeds"
