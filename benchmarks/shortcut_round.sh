#!/usr/bin/env bash
# The shortcut round of EXPERIMENTS.md: a phantom whose marker stands in for FINDING (`shortcut`), or one
# whose marker ignores the labels (`control`); the default method trained on it with the demo's budget;
# then the confounder audit on the marker-only test films (a marker, no FINDING: where a model that learnt
# the marker calls FINDING), with every map, the controls included.
# Usage: benchmarks/shortcut_round.sh shortcut|control SEED [FINDING]   (outputs in runs/exp/shortcut_*)
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=$1; SEED=$2; F=${3:-Pneumothorax}
D=runs/shortcut/$KIND; OUT=runs/exp/shortcut_${KIND}_s$SEED
RC=.venv/bin/roi-consistency
CONTROL=(); [ "$KIND" = control ] && CONTROL=(--shortcut-control)
if [ ! -f "$D/marker_only.csv" ]; then
  $RC phantom --out "$D/phantom" --n-images 2000 --size 256 --seed 0 --shortcut "$F" ${CONTROL[@]+"${CONTROL[@]}"} --quiet
  $RC unify --data-root "$D/phantom" --quiet
  $RC make-csv --data-root "$D/phantom" --out-dir "$D/csv"
  $RC cache --csv "$D/csv/nih_roi_train.csv" --csv "$D/csv/nih_roi_val.csv" --csv "$D/csv/nih_roi_test.csv" \
    --image-root "$D/phantom/images" --size 256 --out "$D/cache256" --quiet
  # the marked test films whose labels lack FINDING
  .venv/bin/python - "$D" "$F" <<'PY'
import csv, sys
d, finding = sys.argv[1:]
with open(f"{d}/csv/nih_roi_test.csv") as fh:
    has = {r["image"]: finding in r["labels"].split("|") for r in csv.DictReader(fh)}
lines = open(f"{d}/phantom/confounders.csv").read().splitlines()
keep = [lines[0]] + [ln for ln in lines[1:] if not has.get(ln.split(",")[0], True)]
open(f"{d}/marker_only.csv", "w").write("\n".join(keep) + "\n")
print(f"marker-only films: {len(keep) - 1} of {len(lines) - 1} marked test films")
PY
fi
mkdir -p "$OUT"
start=$SECONDS
$RC train --preset cpu-demo --seed "$SEED" --train-csv "$D/csv/nih_roi_train.csv" --val-csv "$D/csv/nih_roi_val.csv" \
  --image-root "$D/phantom/images" --cache "$D/cache256" --save "$OUT/ck.pt" > "$OUT/train.log" 2>&1
echo "train_s $((SECONDS - start))" > "$OUT/time.txt"
$RC evaluate --checkpoint "$OUT/ck.best.pt" --csv "$D/csv/nih_roi_test.csv" --image-root "$D/phantom/images" \
  --cache "$D/cache256" --bbox "$D/phantom/BBox_List_2017.csv" --confounders "$D/marker_only.csv" \
  --maps learned,gradcam,random,attribution,anomaly,gradcam16 --road-ratios 0.1 --curve-images 0 \
  --gallery-limit 0 --out-dir "$OUT/eval" > "$OUT/eval.log" 2>&1
echo "total_s $((SECONDS - start))" >> "$OUT/time.txt"
tail -n 12 "$OUT/eval.log"
