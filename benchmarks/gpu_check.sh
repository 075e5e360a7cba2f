#!/usr/bin/env bash
# One-shot GPU check (run on a machine with an NVIDIA GPU, from the repository root):
# convnext_base at 224, bf16, batches 8/32/64, fused vs three calls, compile on/off, data through the
# cache of 1024-px phantom PNGs; then a short real training run (one epoch of each stage) to read the
# GPU's busy share.
# Prints samples/s, GPU utilisation and MFU (277 GFLOP per sample = 3 passes x 3 x 30.8 GFLOP).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PY:-python}
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
# Step and loader figures, side by side.
$PY benchmarks/bench.py --compile --json "$OUT/bench.json" | tee "$OUT/bench.txt"
# MFU against the GPU's dense bf16 peak (H100 SXM 989 TFLOP/s; H200 the same; override with PEAK_TFLOPS).
$PY - "$OUT/bench.json" <<'PYEOF'
import json, os, sys
peak = float(os.environ.get("PEAK_TFLOPS", 989)) * 1e12
fig = json.load(open(sys.argv[1]))
for r in fig["steps"]:
    mfu = r["samples_per_s"] * 277e9 / peak
    print(f"{r['backbone']} b{r['batch']} {r['passes']:9s} compile={r['compile']!s:5s} "
          f"{r['samples_per_s']:8.1f} samples/s  MFU {100 * mfu:5.1f}%")
PYEOF
# A real training run through the cache: the GPU's busy share while it trains.
$PY -m roi_consistency phantom --out "$OUT/ph" --n-images 2000 --size 1024 --quiet
$PY -m roi_consistency unify --data-root "$OUT/ph" --quiet
$PY -m roi_consistency make-csv --data-root "$OUT/ph" --out-dir "$OUT/csv" > /dev/null
$PY -m roi_consistency cache --csv "$OUT/csv/nih_roi_train.csv" --csv "$OUT/csv/nih_roi_val.csv" \
  --image-root "$OUT/ph/images" --size 256 --out "$OUT/cache" --quiet
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$OUT/util.txt" &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT
$PY -m roi_consistency train --backbone convnext_base --no-pretrained --img-size 224 --batch-size 64 \
  --accum-steps 1 --epochs 1 --mask-epochs 1 --workers 12 --cache "$OUT/cache" --train-csv "$OUT/csv/nih_roi_train.csv" \
  --val-csv "$OUT/csv/nih_roi_val.csv" --image-root "$OUT/ph/images" --save "$OUT/ck.pt"
kill $SMI 2>/dev/null || true
awk '{s+=$1; n++} END {printf "GPU busy share during training: %.0f%% (%d samples)\n", s/n, n}' "$OUT/util.txt"
