"""The shortcut phantom's truth against the audit's estimate: for each run, p of the finding on the
marked test films listed in a confounder file minus p on their marker-free twins, beside the reliance the
audit measured by removing the marker (with the fill and with ROAD).

Usage: python benchmarks/twin_reliance.py PHANTOM_DIR CONFOUNDERS_CSV RUN_DIR … [--finding Pneumothorax]
Each RUN_DIR holds ck.best.pt and eval/metrics.json (benchmarks/shortcut_round.sh leaves them so).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from roi_consistency.data.boxes import read_boxes
from roi_consistency.data.images import load_image
from roi_consistency.model.trained import load_trained


def probs(model, paths: list[Path], size: int, cls: int) -> np.ndarray:
    x = torch.stack([load_image(p, size) for p in paths]).float() / 255
    with torch.no_grad():
        return torch.cat([torch.sigmoid(model(c)) for c in x.split(32)])[:, cls].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phantom")
    ap.add_argument("confounders")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--finding", default="Pneumothorax")
    a = ap.parse_args()
    names = sorted(read_boxes(a.confounders))
    print("| run | films | truth: p film − p twin | audit, fill | audit, ROAD |\n|---|---|---|---|---|")
    for run in a.runs:
        model, cfg = load_trained(Path(run) / "ck.best.pt")
        cls, size = cfg.data.classes.index(a.finding), cfg.model.img_size
        truth = probs(model, [Path(a.phantom) / "images" / n for n in names], size, cls) - probs(
            model, [Path(a.phantom) / "twins" / n for n in names], size, cls)
        rel = json.loads((Path(run) / "eval" / "metrics.json").read_text())["confounders"]["sets"]["all"]["reliance"]
        print(f"| {run} | {len(names)} | {truth.mean():+.3f} (>0.1: {(truth > 0.1).mean():.2f}) | "
              f"{rel['fill']['mean']:+.3f} | {rel['road']['mean']:+.3f} |")


if __name__ == "__main__":
    main()
