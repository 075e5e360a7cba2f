#!/usr/bin/env bash
# Round 15 of EXPERIMENTS.md: a mask head trained again, alone (`--epochs 0 --weights`), against each frozen
# classifier of round 12 (benchmarks/shortcut_round.sh), then audited on the marker-only test films, on the
# placebo region (the marker's box mirrored, where no marker is), and with `--eval` evaluated on the whole
# test set (the pointing game, ROAD, the frozen-head randomisation check).
# Usage: benchmarks/head_round.sh method|gw shortcut|control SEED [--eval]   (outputs in runs/exp28/HEAD_KIND_sSEED)
set -euo pipefail
cd "$(dirname "$0")/.."
HEAD=$1; KIND=$2; K=$3; EVAL=${4:-}
D=runs/shortcut/$KIND; OUT=runs/exp28/${HEAD}_${KIND}_s$K
RC=(.venv/bin/roi-consistency); [ "$HEAD" = gw ] && RC=(.venv/bin/python benchmarks/gw_head.py)
mkdir -p "$OUT"
"${RC[@]}" train --preset cpu-demo --seed "$K" --epochs 0 --weights "runs/exp/shortcut_${KIND}_s$K/ck.best.pt" \
  --train-csv "$D/csv/nih_roi_train.csv" --val-csv "$D/csv/nih_roi_val.csv" --image-root "$D/phantom/images" \
  --cache "$D/cache256" --save "$OUT/ck.pt" > "$OUT/train.log" 2>&1
.venv/bin/python benchmarks/marker_audit.py "$OUT/ck.pt" "$D" "$OUT/audit.json" --head "$HEAD"
.venv/bin/python benchmarks/marker_audit.py "$OUT/ck.pt" "$D" "$OUT/placebo.json" --head "$HEAD" --mirror
if [ "$EVAL" = --eval ]; then
  "${RC[@]}" evaluate --checkpoint "$OUT/ck.pt" --csv "$D/csv/nih_roi_test.csv" --image-root "$D/phantom/images" \
    --cache "$D/cache256" --bbox "$D/phantom/BBox_List_2017.csv" --maps learned,gradcam,random --road-ratios 0.1 \
    --curve-images 0 --gallery-limit 0 --sanity --out-dir "$OUT/eval" > "$OUT/eval.log" 2>&1
fi
