#!/usr/bin/env bash
# The confirmation rows of EXPERIMENTS.md: a phantom the design was never chosen on (its own seed and
# STYLE), made once into runs/STYLE_pSEED, then the default trained and evaluated on it exactly as rows
# 70, 73 and 74 were on the project phantom (benchmarks/faithfulness_run.sh, the check included).
# Usage: benchmarks/unseen_phantom.sh STYLE PHANTOM_SEED TRAIN_SEED   (outputs in runs/exp/STYLE_pSEED_sK)
set -euo pipefail
cd "$(dirname "$0")/.."
STYLE=$1; PSEED=$2; K=$3
D=runs/${STYLE}_p$PSEED; RC=.venv/bin/roi-consistency
if [ ! -f "$D/csv/nih_roi_test.csv" ]; then
  $RC phantom --out "$D/phantom" --n-images 2000 --size 256 --seed "$PSEED" --style "$STYLE" --quiet
  $RC unify --data-root "$D/phantom" --quiet
  $RC make-csv --data-root "$D/phantom" --out-dir "$D/csv"
fi
DEMO_DIR=$D EVAL_FLAGS="--curve-images 0 --gallery-limit 0 --sanity" \
  benchmarks/faithfulness_run.sh "${STYLE}_p${PSEED}_s$K" --seed "$K"
