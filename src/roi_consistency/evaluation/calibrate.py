"""Operating points: the probability at or above which each finding is called positive.

`train` chooses them on the validation set at the end of every epoch and stores them in the checkpoint;
this command does the same for a checkpoint that has none (an older one, or one taken mid-epoch), or with
another rule, and writes them into it:

    roi-consistency calibrate --checkpoint ck.pt --csv nih_roi_val.csv --image-root images [--rule f1]

Choose them on the validation CSV, never on the test CSV: thresholds tuned on the test set make its
sensitivity and specificity optimistic (evaluate warns when the two are the same file).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from roi_consistency.data.dataset import ImageCSVDataset, good_rows
from roi_consistency.data.images import ImageCache
from roi_consistency.errors import UserError
from roi_consistency.evaluation import metrics as M
from roi_consistency.files.checkpoint import read_checkpoint, save_checkpoint
from roi_consistency.files.lock import RunLock
from roi_consistency.model.network import ROIModel
from roi_consistency.model.trained import restore
from roi_consistency.runtime import pick_device


@torch.no_grad()
def predict_probs(model: ROIModel, ds: ImageCSVDataset, batch_size: int, workers: int, device: torch.device,
                  progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Full-image probabilities [N,C] and labels [N,C] of the dataset's readable images."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    probs, rows, skipped = [], [], []
    for batch in tqdm(loader, desc="calibrate", unit="batch", disable=not progress):
        x, _, idx = good_rows(batch, ds.names, skipped)
        if len(idx):
            probs.append(torch.sigmoid(model(x.to(device)).float()).cpu().numpy())
            rows.append(idx.numpy())
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return (np.concatenate(probs) if probs else np.zeros((0, len(ds.classes)), np.float32)), ds.labels[rows]


def calibrate_checkpoint(checkpoint: str, csv: str, image_root: str, rule: str = "youden", out: str | None = None,
                         batch_size: int = 16, device: str = "auto", workers: int = 2, progress: bool = True,
                         cache: str | None = None, skip_bad: bool = False) -> dict:
    """Choose per-class thresholds on a labelled CSV and write them into the checkpoint (or a copy at
    `out`), atomically. Returns the thresholds record."""
    if Path(checkpoint).is_dir():
        raise UserError(f"--checkpoint {checkpoint} is an exported folder; calibrate the checkpoint it was exported "
                        "from, then export it again")
    with RunLock(out or checkpoint):  # refused while a `train` writes that file
        dev = pick_device(device)
        ckpt = read_checkpoint(checkpoint)  # read once: the thresholds go with exactly these weights
        model, cfg = restore(ckpt, checkpoint, dev)
        size = cfg.model.img_size
        ds = ImageCSVDataset(csv, image_root, size, cfg.data.classes, cache=ImageCache(cache, size) if cache else None)
        if not ds.has_labels:
            raise UserError(f"{csv}: choosing thresholds needs a labels column (use the validation CSV)")
        ds.drop_bad(skip_bad, progress)
        p, y = predict_probs(model, ds, batch_size, workers, dev, progress)
        record = {"rule": rule, "values": M.choose_thresholds(y, p, cfg.data.classes, rule),
                  "csv": str(Path(csv).resolve()), "n_images": int(len(y)), "step": int(ckpt.get("step", 0))}
        save_checkpoint({**ckpt, "thresholds": record}, out or checkpoint)
    return record


def format_thresholds(record: dict) -> str:
    lines = [f"thresholds ({record['rule']}, on {record['n_images']} images of {Path(record['csv']).name}):"]
    lines += [f"  {c:20s} {'undefined (one label value only)' if t is None else f'{t:.4f}'}"
              for c, t in record["values"].items()]
    return "\n".join(lines)
