"""Test AUROC of a checkpoint's classifier on the full images of a demo-layout phantom.

    python benchmarks/classifier_auroc.py CHECKPOINT DEMO_DIR   (DEMO_DIR as made by ./run_all.sh --demo)
"""
import sys

import numpy as np
import torch

from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.data.images import ImageCache
from roi_consistency.evaluation.metrics import mean_auroc, per_class_auroc
from roi_consistency.model.trained import load_trained


def demo_test_set(demo_dir: str, cfg) -> ImageCSVDataset:
    """The test split of a demo-layout folder, read from its 256-px cache at the checkpoint's size."""
    return ImageCSVDataset(f"{demo_dir}/csv/nih_roi_test.csv", f"{demo_dir}/phantom/images", cfg.model.img_size,
                           cfg.data.classes, cache=ImageCache(f"{demo_dir}/cache256"))


def main(checkpoint: str, demo_dir: str) -> None:
    model, cfg = load_trained(checkpoint, torch.device("cpu"))
    ds = demo_test_set(demo_dir, cfg)
    probs, labels = [], []
    with torch.no_grad():
        for x, y, _ in torch.utils.data.DataLoader(ds, batch_size=64):
            probs.append(torch.sigmoid(model.backbone(model.normalize(x))).numpy())
            labels.append(y.numpy())
    auc = per_class_auroc(np.concatenate(labels), np.concatenate(probs), cfg.data.classes)
    print(f"test mean AUROC {mean_auroc(auc):.3f} (" + ", ".join(
        f"{c} {v:.3f}" for c, v in auc.items() if v is not None) + ")")


if __name__ == "__main__":
    main(*sys.argv[1:3])
