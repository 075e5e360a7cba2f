#!/usr/bin/env bash
# End-to-end pipeline: set up .venv, get the data, flatten it, build the split CSVs, train, infer on
# the test split, evaluate against the boxes, and write an HTML report.
#
#   ./run_all.sh --demo                       # built-in phantom data, CPU preset, no network needed
#   ./run_all.sh --data-root /data/nih        # an existing NIH ChestX-ray14 copy
#   ./run_all.sh                              # download NIH with kagglehub first (~42 GB)
#   ./run_all.sh --demo -- --epochs 9         # everything after -- goes to `roi-consistency train`
#   ./run_all.sh --demo --retrained-check     # the report's randomisation check with the head retrained
#                                             # (the fair one for the learned map): 4 more mask stages
#
# Stages whose outputs exist are skipped, and training resumes from its checkpoint, so running the
# same command again after Ctrl+C continues where it stopped. Everything is also logged to
# WORK/roi-run.log.
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
DEMO=0; DATA_ROOT=""; WORK=""; TRAIN_ARGS=(); RETRAINED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) DEMO=1 ;;
    --data-root) DATA_ROOT="${2:?--data-root needs a folder}"; shift ;;
    --work) WORK="${2:?--work needs a folder}"; shift ;;
    --retrained-check) RETRAINED=1 ;;
    -h|--help) usage; echo; echo "options: --demo | --data-root DIR, --work DIR (default runs/demo or runs/nih), --retrained-check"; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$WORK" ]; then WORK=$([ "$DEMO" = 1 ] && echo runs/demo || echo runs/nih); fi
mkdir -p "$WORK"
# tee ignores Ctrl+C, so training can still report and save while the log keeps flowing.
exec > >(trap '' INT; exec tee -a "$WORK/roi-run.log") 2>&1
echo "== run_all.sh $(date -u +%FT%TZ) demo=$DEMO work=$WORK"
start=$SECONDS
stage() { echo; echo "== [$(( SECONDS - start ))s] $*"; }

stage "setup"
./setup.sh
RC=.venv/bin/roi-consistency

if [ "$DEMO" = 1 ]; then
  DATA_ROOT="$WORK/phantom"
  if [ -f "$DATA_ROOT/test_list.txt" ]; then stage "phantom: exists, skipped"
  else stage "phantom"; $RC phantom --out "$DATA_ROOT" --n-images 2000 --size 256; fi
elif [ -z "$DATA_ROOT" ]; then
  stage "download"
  DATA_ROOT=$($RC download | tail -n 1)
fi

stage "unify"
$RC unify --data-root "$DATA_ROOT"

CSV_DIR="$WORK/csv"
if [ -f "$CSV_DIR/nih_roi_test.csv" ]; then stage "make-csv: exists, skipped"
else stage "make-csv"; $RC make-csv --data-root "$DATA_ROOT" --out-dir "$CSV_DIR"; fi

# Decode every image once into a uint8 memory-mapped cache; training and scoring read rows from it.
CACHE="$WORK/cache256"
stage "cache (256 px)"
$RC cache --csv "$CSV_DIR/nih_roi_train.csv" --csv "$CSV_DIR/nih_roi_val.csv" --csv "$CSV_DIR/nih_roi_test.csv" \
  --image-root "$DATA_ROOT/images" --size 256 --out "$CACHE"

CKPT="$WORK/checkpoints/nih_roi_consistency.pt"
PRESET=$([ "$DEMO" = 1 ] && echo cpu-demo || echo nih)
RESUME=()
[ -f "$CKPT" ] && RESUME=(--resume)  # continue (or no-op when finished) after an interruption
stage "train (preset $PRESET${RESUME:+, resuming})"
$RC train --preset "$PRESET" --train-csv "$CSV_DIR/nih_roi_train.csv" --val-csv "$CSV_DIR/nih_roi_val.csv" \
  --image-root "$DATA_ROOT/images" --cache "$CACHE" --save "$CKPT" ${RESUME[@]+"${RESUME[@]}"} ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}

# Score with the best checkpoint by validation AUROC (the latest if there is no validation).
BEST="${CKPT%.pt}.best.pt"
[ -f "$BEST" ] || BEST="$CKPT"
BBOX=()
[ -f "$DATA_ROOT/BBox_List_2017.csv" ] && BBOX=(--bbox "$DATA_ROOT/BBox_List_2017.csv")

if [ -f "$WORK/preds.json" ] && [ "$WORK/preds.json" -nt "$BEST" ]; then stage "infer: up to date, skipped"
else
  stage "infer"
  $RC infer --checkpoint "$BEST" --csv "$CSV_DIR/nih_roi_test.csv" --image-root "$DATA_ROOT/images" \
    --cache "$CACHE" --out "$WORK/preds.json" --vis-dir "$WORK/roi_vis" --vis-limit 32
fi

if [ "$RETRAINED" = 1 ]; then
  if [ -f "$WORK/eval/sanity.json" ] && [ "$WORK/eval/sanity.json" -nt "$BEST" ]; then
    stage "sanity (the head retrained): up to date, skipped"
  else
    stage "sanity (the head retrained)"
    $RC sanity --checkpoint "$BEST" --train-csv "$CSV_DIR/nih_roi_train.csv" --val-csv "$CSV_DIR/nih_roi_val.csv" \
      --csv "$CSV_DIR/nih_roi_test.csv" --image-root "$DATA_ROOT/images" --cache "$CACHE" --out-dir "$WORK/eval"
  fi
fi

if [ -f "$WORK/eval/report.html" ] && [ "$WORK/eval/report.html" -nt "$BEST" ] \
   && ! [ "$WORK/eval/sanity.json" -nt "$WORK/eval/report.html" ]; then stage "evaluate: up to date, skipped"
else
  stage "evaluate"
  # The demo caps the two costliest new metrics (BENCHMARKS.md, "Where evaluate's time goes"): curves on
  # 16 test images, ROAD at the model's keep ratio only.
  CAPS=(--curve-images 200)
  [ "$DEMO" = 1 ] && CAPS=(--curve-images 16 --road-ratios 0.1)
  $RC evaluate --checkpoint "$BEST" --csv "$CSV_DIR/nih_roi_test.csv" --image-root "$DATA_ROOT/images" \
    --cache "$CACHE" ${BBOX[@]+"${BBOX[@]}"} --out-dir "$WORK/eval" --sanity "${CAPS[@]}"
fi

stage "done in $(( SECONDS - start ))s"
echo "CSVs:        $CSV_DIR"
echo "checkpoint:  $CKPT (best: $BEST)"
echo "predictions: $WORK/preds.json, overlays in $WORK/roi_vis/"
echo "metrics:     $WORK/eval/metrics.json"
echo "report:      $WORK/eval/report.html"
