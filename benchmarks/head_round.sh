#!/usr/bin/env bash
# Rounds 15-16 of EXPERIMENTS.md: a mask head trained again, alone (`--epochs 0 --weights`), against a frozen
# classifier: round 12's (benchmarks/shortcut_round.sh; KIND shortcut or control) or round 13's on the unseen
# alt phantom (benchmarks/unseen_phantom.sh alt 7 K; KIND alt_p7). On the shortcut phantoms it audits the
# marker-only test films and the placebo region (the marker's box mirrored, where no marker is). `--eval`
# evaluates the whole test set (the pointing game, ROAD, the frozen-head randomisation check); `--sanity`
# runs the retrained-head randomisation check.
# Usage: benchmarks/head_round.sh method|gw shortcut|control|alt_p7 SEED [--eval|--sanity]
#        (outputs in runs/exp28/HEAD_KIND_sSEED)
set -euo pipefail
cd "$(dirname "$0")/.."
HEAD=$1; KIND=$2; K=$3; MODE=${4:-}
case $KIND in
  shortcut|control) D=runs/shortcut/$KIND; W=runs/exp/shortcut_${KIND}_s$K/ck.best.pt ;;
  *) D=runs/$KIND; W=runs/exp/${KIND}_s$K/ck.best.pt ;;
esac
OUT=runs/exp28/${HEAD}_${KIND}_s$K
RC=(.venv/bin/roi-consistency); [ "$HEAD" = gw ] && RC=(.venv/bin/python benchmarks/gw_head.py)
DATA=(--train-csv "$D/csv/nih_roi_train.csv" --val-csv "$D/csv/nih_roi_val.csv" --image-root "$D/phantom/images"
      --cache "$D/cache256")
mkdir -p "$OUT"
if [ ! -f "$OUT/ck.pt" ]; then
  "${RC[@]}" train --preset cpu-demo --seed "$K" --epochs 0 --weights "$W" "${DATA[@]}" --save "$OUT/ck.pt" \
    > "$OUT/train.log" 2>&1
fi
if { [ "$KIND" = shortcut ] || [ "$KIND" = control ]; } && [ ! -f "$OUT/placebo.json" ]; then
  .venv/bin/python benchmarks/marker_audit.py "$OUT/ck.pt" "$D" "$OUT/audit.json" --head "$HEAD"
  .venv/bin/python benchmarks/marker_audit.py "$OUT/ck.pt" "$D" "$OUT/placebo.json" --head "$HEAD" --mirror
fi
if [ "$MODE" = --eval ]; then
  "${RC[@]}" evaluate --checkpoint "$OUT/ck.pt" --csv "$D/csv/nih_roi_test.csv" --image-root "$D/phantom/images" \
    --cache "$D/cache256" --bbox "$D/phantom/BBox_List_2017.csv" --maps learned,gradcam,random --road-ratios 0.1 \
    --curve-images 0 --gallery-limit 0 --sanity --out-dir "$OUT/eval" > "$OUT/eval.log" 2>&1
elif [ "$MODE" = --sanity ]; then
  "${RC[@]}" sanity --checkpoint "$OUT/ck.pt" "${DATA[@]}" --csv "$D/csv/nih_roi_test.csv" \
    --out-dir "$OUT/retrained" > "$OUT/sanity.log" 2>&1
fi
