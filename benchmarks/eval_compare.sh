#!/usr/bin/env bash
# Time `evaluate` on the demo's checkpoint with run_all.sh --demo's flags: first with the code of another
# source tree (OLD_SRC, e.g. a `git worktree` of an earlier commit, its src/ folder), then with this
# checkout's; prints both wall times. Run it alone on the machine; metrics in runs/prof/cmp/{old,new}/.
#
#   git worktree add /tmp/old 2a42f52 && bash benchmarks/eval_compare.sh /tmp/old/src
set -euo pipefail
cd "$(dirname "$0")/.."
OLD_SRC="${1:?usage: eval_compare.sh OLD_SRC [DEMO_DIR]}"
D="${2:-runs/demo}"
OUT=runs/prof/cmp
mkdir -p "$OUT"
args=(--checkpoint "$D/checkpoints/nih_roi_consistency.best.pt" --csv "$D/csv/nih_roi_test.csv"
      --image-root "$D/phantom/images" --cache "$D/cache256" --bbox "$D/phantom/BBox_List_2017.csv"
      --sanity --curve-images 16 --road-ratios 0.1)
for v in old new; do
  rm -rf "${OUT:?}/$v"
  path=$([ "$v" = old ] && echo "$OLD_SRC" || echo src)
  start=$(date +%s.%N)
  PYTHONPATH="$path" .venv/bin/python -m roi_consistency evaluate "${args[@]}" --out-dir "$OUT/$v" > "$OUT/$v.log" 2>&1
  echo "$v: $(echo "$(date +%s.%N) - $start" | bc) s (log $OUT/$v.log)"
done
