#!/usr/bin/env bash
# One classifier-budget row of EXPERIMENTS.md: train only the classifier stage of `--preset cpu-demo`
# (with the given flags; --mask-epochs 0) on the demo phantom, then print its test AUROC on the full
# image (which the mask stage does not change). Needs the demo data (./run_all.sh --demo);
# DEMO_DIR=runs/alt for the second phantom. Usage: benchmarks/classifier_run.sh NAME EPOCHS BATCH [train flags …]
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DEMO_DIR:-runs/demo}; OUT=runs/clf/$1; E=$2; BS=$3; shift 3
mkdir -p "$OUT"
start=$SECONDS
.venv/bin/roi-consistency train --preset cpu-demo --train-csv "$D/csv/nih_roi_train.csv" \
  --val-csv "$D/csv/nih_roi_val.csv" --image-root "$D/phantom/images" --cache "$D/cache256" --save "$OUT/ck.pt" \
  --batch-size "$BS" --epochs "$E" --mask-epochs 0 "$@" > "$OUT/train.log" 2>&1
echo "$1: classifier stage $((SECONDS - start)) s; $(.venv/bin/python benchmarks/classifier_auroc.py "$OUT/ck.pt" "$D")"
