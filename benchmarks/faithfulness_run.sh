#!/usr/bin/env bash
# One row of EXPERIMENTS.md: train on the demo phantom with the given flags, then evaluate on its test
# split with the Grad-CAM and random controls. Needs the demo data (./run_all.sh --demo, or its first
# stages). Usage: benchmarks/faithfulness_run.sh NAME [roi-consistency train flags …]; EVAL_FLAGS go to evaluate
# (e.g. EVAL_FLAGS="--curve-images 0").
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DEMO_DIR:-runs/demo}; OUT=runs/exp/$1; shift
mkdir -p "$OUT"
RC=.venv/bin/roi-consistency
$RC cache --csv "$D/csv/nih_roi_train.csv" --csv "$D/csv/nih_roi_val.csv" \
  --csv "$D/csv/nih_roi_test.csv" --image-root "$D/phantom/images" --size 256 --out "$D/cache256" --quiet
start=$SECONDS
$RC train --preset cpu-demo --train-csv "$D/csv/nih_roi_train.csv" --val-csv "$D/csv/nih_roi_val.csv" \
  --image-root "$D/phantom/images" --cache "$D/cache256" --save "$OUT/ck.pt" "$@" > "$OUT/train.log" 2>&1
echo "train_s $((SECONDS - start))" > "$OUT/time.txt"
$RC evaluate --checkpoint "$OUT/ck.pt" --csv "$D/csv/nih_roi_test.csv" --image-root "$D/phantom/images" \
  --cache "$D/cache256" --bbox "$D/phantom/BBox_List_2017.csv" --out-dir "$OUT/eval" ${EVAL_FLAGS:-} | tee "$OUT/eval.log"
echo "total_s $((SECONDS - start))" >> "$OUT/time.txt"
