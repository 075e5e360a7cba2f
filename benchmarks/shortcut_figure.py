"""The README's headline figure: the confounder audit of a marker-only test film (a marker, no
pneumothorax) on a model that relies on the marker and on a control model that ignores it, with the
learned map's and Grad-CAM's top 10 % beside the film.

Each row is one model of round 12 of EXPERIMENTS.md (benchmarks/shortcut_round.sh) and the film is chosen by
rule, not by eye: among the marker-only films of the set named (relied: the marker's removal lowers p by
more than 0.1; ignored: by less than 0.02), the one whose drop is the set's median.

Usage: python benchmarks/shortcut_figure.py OUT.png --row relied CHECKPOINT SHORTCUT_DIR TITLE
                                                    --row ignored CHECKPOINT SHORTCUT_DIR TITLE
SHORTCUT_DIR: as benchmarks/shortcut_round.sh makes it (phantom/, csv/, cache256/, marker_only.csv).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.data.images import ImageCache
from roi_consistency.evaluation.confounders import IGNORES, RELIES, audit, covered, read_confounders
from roi_consistency.evaluation.explainers import GradCAM, Learned
from roi_consistency.evaluation.metrics import box_mask
from roi_consistency.model.trained import load_trained

MAPS = {"learned": "learned map", "gradcam": "Grad-CAM"}


def median_film(checkpoint: str, d: Path, which: str) -> dict:
    """The audit example of the set `which` whose drop without the marker is the set's median."""
    model, cfg = load_trained(checkpoint, torch.device("cpu"))
    size = cfg.model.img_size
    ds = ImageCSVDataset(d / "csv/nih_roi_test.csv", d / "phantom/images", size, cfg.data.classes,
                         cache=ImageCache(str(d / "cache256"), size))
    listed, _ = read_confounders(str(d / "marker_only.csv"), ds, cfg.data.classes, size)
    found = audit(model, ds, listed, [Learned(model), GradCAM(model)], cfg.method.keep_ratio, 16, 0, len(listed))
    drop = lambda ex: ex["p"]["full"] - ex["p"]["fill"]  # noqa: E731
    chosen = sorted((ex for ex in found.examples if (drop(ex) > RELIES if which == "relied" else drop(ex) < IGNORES)),
                    key=drop)
    if not chosen:
        raise SystemExit(f"{checkpoint}: no marker-only film in the set {which!r}")
    return {**chosen[len(chosen) // 2], "n": len(chosen), "keep": cfg.method.keep_ratio}


def share(mask: np.ndarray, box) -> float:
    """The share of the marker's box inside the mask, with the audit's own pixel rule."""
    return covered(mask, box_mask(mask.shape, box[1:]))


def draw_row(axes, ex: dict, title: str) -> None:
    gray, box = np.asarray(ex["gray"]), ex["boxes"][0]
    p = ex["p"]
    for ax, name in zip(axes, ("film", *MAPS)):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        if name == "film":
            ax.set_title(f"{title}\np {p['full']:.2f} with the marker, {p['fill']:.2f} without", fontsize=9)
        else:
            m = ex["maps"][name]
            ax.imshow(np.ma.masked_where(~m["mask"], m["map"]), cmap="autumn", vmin=0, vmax=1, alpha=0.7)
            ax.set_title(f"{MAPS[name]}, top {ex['keep']:.0%}\nshare of the marker {share(m['mask'], box):.2f}",
                         fontsize=9)
        pad = 3  # the outline around the marker, not over it
        ax.add_patch(Rectangle((box[1] - pad, box[2] - pad), box[3] + 2 * pad, box[4] + 2 * pad, fill=False,
                               edgecolor="cyan", linewidth=1, linestyle="--"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--row", nargs=4, action="append", required=True,
                    metavar=("relied|ignored", "CHECKPOINT", "SHORTCUT_DIR", "TITLE"))
    a = ap.parse_args()
    fig = Figure(figsize=(7.5, 2.9 * len(a.row)))
    axes = fig.subplots(len(a.row), 3, squeeze=False)
    for row, (which, checkpoint, d, title) in zip(axes, a.row):
        ex = median_film(checkpoint, Path(d), which)
        draw_row(row, ex, title)
        print(f"{title}: {ex['image']} (median of {ex['n']} {which} films), p {ex['p']['full']:.3f} -> "
              f"{ex['p']['fill']:.3f}")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
