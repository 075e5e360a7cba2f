"""How deep the randomisation check must go before each map stops depending on the trained model: the
cascade of evaluate's `--sanity` (sanity.py, every stage down to the stem) on its own, about 45 s on the
demo instead of a whole evaluation, on the same test pairs as evaluate's check. Prints one Markdown row
per map: its median Spearman correlation with the original map after each step (EXPERIMENTS.md row 72).

    .venv/bin/python benchmarks/sanity_depth.py runs/demo/checkpoints/nih_roi_consistency.best.pt runs/demo
"""
import argparse

import torch

from roi_consistency.data.boxes import model_boxes
from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.data.images import ImageCache
from roi_consistency.evaluation.curves import sample_rows
from roi_consistency.evaluation.randomisation import frozen_head_check, sanity_pairs
from roi_consistency.model.trained import load_trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("demo_dir", help="a folder laid out as run_all.sh --demo leaves it (csv/, phantom/, cache256/)")
    ap.add_argument("--images", type=int, default=64, help="test images with a finding (evaluate's default)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    d, dev = a.demo_dir, torch.device("cpu")
    model, cfg = load_trained(a.checkpoint, dev)
    size = cfg.model.img_size
    ds = ImageCSVDataset(f"{d}/csv/nih_roi_test.csv", f"{d}/phantom/images", size, cfg.data.classes,
                         cache=ImageCache(f"{d}/cache256", size))
    boxes = model_boxes(ds, f"{d}/phantom/BBox_List_2017.csv", cfg.data.classes, size)
    rows = sample_rows(ds.labels, ds.names, boxes, a.images, a.seed + 5)[0]  # evaluate's draw of the check's images
    pairs = sanity_pairs(ds, rows, boxes, model, dev)
    s = frozen_head_check(model, cfg.method.mode, pairs, seed=a.seed)
    print(f"{s['n_pairs']} pairs; median Spearman rho after each stage is randomised, cumulatively, top-down")
    print("| map | " + " | ".join(f"+ {n}" for n in s["stages"]) + " |")
    print("|---|" + "---|" * len(s["stages"]))
    for k, v in s["maps"].items():
        print(f"| {k} | " + " | ".join(f"{m:.2f}" for m in v["median"]) + " |")


if __name__ == "__main__":
    main()
