"""The `infer` command: probabilities on the full image, the crop (only the mask kept) and the drop (the
mask removed), per image and class, into preds.json; overlays, crops and drops as PNGs into --vis-dir.
It scores through the Python API's `Model.score`, so both give the same numbers.

    roi-consistency infer --checkpoint checkpoints/nih_roi_consistency.pt --csv nih_roi_test.csv \
        --image-root images --out preds.json --vis-dir roi_vis

Classes, image size, normalisation, keep ratio and fill always come from the checkpoint. Where the
mask network draws one map per class, each image's mask is the map of its most probable class,
named as `mask_class`.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from roi_consistency.api import load
from roi_consistency.data.dataset import ImageCSVDataset, good_rows
from roi_consistency.data.images import ImageCache
from roi_consistency.data.preflight import image_problem
from roi_consistency.errors import UserError
from roi_consistency.evaluation.thresholds import called
from roi_consistency.files.atomic import write_json, write_png
from roi_consistency.model.config import FILLS
from roi_consistency.model.network import ROIModel
from roi_consistency.outputs.overlay import overlay


def write_vis(vis_dir: str | Path, name: str, model: ROIModel, s: dict, i: int) -> None:
    stem = Path(name).stem
    xn, m = s["xn"][i], s["mask"][i, 0].cpu().numpy()
    gray = model.to_gray(xn).cpu().numpy()
    write_png(Path(vis_dir) / f"{stem}_overlay.png", overlay(gray, s["maps"][i, 0].float().cpu().numpy(), m > 0.5))
    crop, drop = model.crop_drop(xn[None], s["mask"][i][None])
    write_png(Path(vis_dir) / f"{stem}_crop.png", model.to_gray(crop[0]).cpu().numpy())
    write_png(Path(vis_dir) / f"{stem}_drop.png", model.to_gray(drop[0]).cpu().numpy())


def prediction_record(name: str, classes: list[str], s: dict, i: int, y: list[float] | None,
                      thresholds: dict | None = None) -> dict:
    """One image's entry in preds.json: `labels` (and `unknown`, where any) from its label vector y;
    `positive`: the findings at or above their stored thresholds."""
    full, crop, drop = (s[k][i].cpu().double().tolist() for k in ("full", "crop", "drop"))
    rec = {"image": name}
    if y is not None:
        rec["labels"] = [c for c, v in zip(classes, y) if v > 0.5]
        if any(math.isnan(v) for v in y):
            rec["unknown"] = [c for c, v in zip(classes, y) if math.isnan(v)]
    if thresholds is not None:
        rec["positive"] = [c for c, hit in zip(classes, called(np.array(full), classes, thresholds)) if hit]
    rec["prob_full"] = dict(zip(classes, full))
    rec["prob_crop"] = dict(zip(classes, crop))
    rec["prob_drop"] = dict(zip(classes, drop))
    rec["faithfulness"] = {c: f - d for c, f, d in zip(classes, full, drop)}
    if s.get("explained") is not None:  # a class-specific map: the most probable class's region
        rec["mask_class"] = classes[int(s["explained"][i])]
    return rec


def _header(checkpoint: str, cfg, r: float, thresholds: dict | None, preds: list[dict]) -> dict:
    return {"checkpoint": str(checkpoint), "classes": cfg.data.classes, "keep_ratio": r,
            "img_size": cfg.model.img_size, "fill": FILLS[cfg.method.fill], "thresholds": thresholds,
            "predictions": preds}


NO_THRESHOLDS = ("note: {ck} has no operating points, so preds.json has no `positive`; choose them with "
                 "`roi-consistency calibrate --checkpoint {ck} --csv VAL_CSV --image-root ...`")


def infer_csv(checkpoint: str, csv: str, image_root: str, out: str = "preds.json", keep_ratio: float | None = None,
              vis_dir: str | None = None, vis_limit: int = 16, batch_size: int = 16, device: str = "auto",
              workers: int = 2, progress: bool = True, cache: str | None = None, skip_bad: bool = False) -> dict:
    api = load(checkpoint, device)
    model, cfg, dev = api.net, api.cfg, api.device
    classes, size = cfg.data.classes, cfg.model.img_size
    r = keep_ratio if keep_ratio is not None else cfg.method.keep_ratio
    if model.thresholds is None and progress:
        tqdm.write(NO_THRESHOLDS.format(ck=checkpoint), file=sys.stderr)
    ds = ImageCSVDataset(csv, image_root, size, classes, cache=ImageCache(cache, size) if cache else None)
    skipped = ds.drop_bad(skip_bad, progress)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=dev.type == "cuda")
    preds, written = [], 0
    with tqdm(total=len(ds), desc="infer", unit="img", disable=not progress) as bar:
        for batch in loader:
            bar.update(len(batch[2]))
            x, y, idx = good_rows(batch, ds.names, skipped)
            if not len(idx):
                continue
            s = api.score(x.to(dev), r)
            for j, i in enumerate(idx.tolist()):
                labels = y[j].tolist() if ds.has_labels else None
                preds.append(prediction_record(ds.names[i], classes, s, j, labels, model.thresholds))
                if vis_dir and written < vis_limit:
                    write_vis(vis_dir, ds.names[i], model, s, j)
                    written += 1
    result = {**_header(checkpoint, cfg, r, model.thresholds, preds), "skipped_images": skipped}
    write_json(out, result)
    return result


def infer_image(checkpoint: str, image: str, keep_ratio: float | None = None, out: str | None = None,
                save_mask: str | None = None, save_crop: str | None = None, vis_dir: str | None = None,
                device: str = "auto") -> dict:
    api = load(checkpoint, device)
    model, cfg = api.net, api.cfg
    r = keep_ratio if keep_ratio is not None else cfg.method.keep_ratio
    problem = image_problem(Path(image))
    if problem:
        raise UserError(f"--image {image}: {problem}")
    s = api.score(next(api.batches([image], 1, False)), r)
    if save_mask:
        write_png(save_mask, (s["mask"][0, 0].cpu().numpy() * 255).astype(np.uint8))
    if save_crop:
        write_png(save_crop, model.to_gray(model.crop_drop(s["xn"][:1], s["mask"][:1])[0][0]).cpu().numpy())
    if vis_dir:
        write_vis(vis_dir, Path(image).name, model, s, 0)
    rec = prediction_record(Path(image).name, cfg.data.classes, s, 0, None, model.thresholds)
    result = _header(checkpoint, cfg, r, model.thresholds, [rec])
    if out:
        write_json(out, result)
    return result


def format_table(rec: dict) -> str:
    """The single-image table: one row per class, sorted by p_full; a * marks a finding called positive."""
    lines = [f"{'class':20s} {'p_full':>8s} {'p_crop':>8s} {'p_drop':>8s} {'faithful':>9s}"]
    positive = set(rec.get("positive", ()))
    for c in sorted(rec["prob_full"], key=lambda c: -rec["prob_full"][c]):
        lines.append(f"{c:20s} {rec['prob_full'][c]:8.4f} {rec['prob_crop'][c]:8.4f} {rec['prob_drop'][c]:8.4f} "
                     f"{rec['faithfulness'][c]:+9.4f}" + ("  * positive" if c in positive else ""))
    if "positive" not in rec:
        lines.append("(no operating points in this checkpoint: see `roi-consistency calibrate`)")
    return "\n".join(lines)
