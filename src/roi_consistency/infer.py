"""Inference: probabilities on the full image, the crop (mask kept) and the drop (mask removed), per
image and class, into preds.json; mask overlays, crops and drops as PNGs into --vis-dir.

    roi-consistency infer --checkpoint checkpoints/nih_roi_consistency.pt --csv nih_roi_test.csv \
        --image-root images --out preds.json --vis-dir roi_vis

Classes, image size and normalisation always come from the checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from roi_consistency.cache import ImageCache
from roi_consistency.checkpoint import load_checkpoint
from roi_consistency.data import ImageCSVDataset, load_image
from roi_consistency.errors import UserError
from roi_consistency.model import ROIModel, build_model

FILLS = {"mean": "ImageNet mean intensity (0 after normalisation)",
         "normal": "the mean image of the training set's normal (no finding) images, pixel by pixel"}


def fill_text(cfg: dict) -> str:
    return FILLS[cfg.get("fill", "mean")]


def pick_device(flag: str = "auto") -> torch.device:
    if flag == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    return torch.device("cuda" if flag in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def load_trained(path: str, device: torch.device) -> tuple[ROIModel, dict]:
    """Model in eval mode and the training config (a plain dict) from a checkpoint."""
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    model = build_model(cfg, load_pretrained=False)
    model.backbone.load_state_dict(ckpt["backbone"])
    model.mask_net.load_state_dict(ckpt["mask_net"])
    model.set_fill(ckpt.get("fill_image"))
    # channels-last weights make every conv run channels-last (faster on CUDA and CPU alike)
    return model.to(device, memory_format=torch.channels_last).eval(), cfg


@torch.no_grad()
def score(model: ROIModel, x: torch.Tensor, keep_ratio: float) -> dict[str, torch.Tensor]:
    """Probabilities for full/crop/drop plus the mask logits and binary mask, in one backbone call."""
    xn = model.normalize(x)
    mk = model.masks(xn, keep_ratio)
    m = mk["mask"]
    out = model.backbone(torch.cat([xn, *model.crop_drop(xn, m)])).float()
    p_full, p_crop, p_drop = torch.sigmoid(out).chunk(3)
    return {"full": p_full, "crop": p_crop, "drop": p_drop, "mask": m, "mask_logits": mk["logits"], "xn": xn,
            "explained": mk["explained"]}


def to_gray(xn: torch.Tensor, model: ROIModel) -> np.ndarray:
    """Undo the normalisation of a [3,H,W] model input; a removed pixel shows as the fill it got."""
    return (xn * model.std[0] + model.mean[0]).mean(0).clamp(0, 1).cpu().numpy()


def overlay(gray: np.ndarray, heat: np.ndarray, region: np.ndarray) -> np.ndarray:
    """RGB uint8: the image with `heat` (any range) as a jet overlay and `region`'s outline in green."""
    from matplotlib import colormaps
    h = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    rgb = 0.55 * np.repeat(gray[..., None], 3, axis=2) + 0.45 * colormaps["jet"](h)[..., :3]
    r = region.astype(bool)
    inner = r.copy()
    inner[1:-1, 1:-1] = r[1:-1, 1:-1] & r[:-2, 1:-1] & r[2:, 1:-1] & r[1:-1, :-2] & r[1:-1, 2:]
    rgb[r & ~inner] = (0.0, 1.0, 0.0)
    return (rgb.clip(0, 1) * 255).astype(np.uint8)


def save_png(arr: np.ndarray, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img = Image.fromarray(arr if arr.dtype == np.uint8 else (arr.clip(0, 1) * 255).astype(np.uint8))
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def write_vis(vis_dir: str | Path, name: str, model: ROIModel, s: dict, i: int) -> None:
    stem = Path(name).stem
    xn, m = s["xn"][i], s["mask"][i, 0].cpu().numpy()
    gray = to_gray(xn, model)
    heat = s["mask_logits"][i, 0].float().cpu().numpy() if s["mask_logits"] is not None else m
    save_png(overlay(gray, heat, m > 0.5), Path(vis_dir) / f"{stem}_overlay.png")
    crop, drop = model.crop_drop(xn[None], s["mask"][i][None])
    save_png(to_gray(crop[0], model), Path(vis_dir) / f"{stem}_crop.png")
    save_png(to_gray(drop[0], model), Path(vis_dir) / f"{stem}_drop.png")


def prediction_record(name: str, classes: list[str], s: dict, i: int, labels: list[str] | None) -> dict:
    full, crop, drop = (s[k][i].cpu().double().tolist() for k in ("full", "crop", "drop"))
    rec = {"image": name}
    if labels is not None:
        rec["labels"] = labels
    rec["prob_full"] = dict(zip(classes, full))
    rec["prob_crop"] = dict(zip(classes, crop))
    rec["prob_drop"] = dict(zip(classes, drop))
    rec["faithfulness"] = {c: f - d for c, f, d in zip(classes, full, drop)}
    if s.get("explained") is not None:  # a class-specific map: the most probable class's region
        rec["mask_class"] = classes[int(s["explained"][i])]
    return rec


def write_json(obj: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def infer_csv(checkpoint: str, csv: str, image_root: str, out: str = "preds.json", keep_ratio: float | None = None,
              vis_dir: str | None = None, vis_limit: int = 16, batch_size: int = 16, device: str = "auto",
              workers: int = 2, progress: bool = True, cache: str | None = None) -> dict:
    dev = pick_device(device)
    model, cfg = load_trained(checkpoint, dev)
    classes, r = cfg["classes"], keep_ratio if keep_ratio is not None else cfg["keep_ratio"]
    ds = ImageCSVDataset(csv, image_root, cfg["img_size"], classes,
                         cache=ImageCache(cache, cfg["img_size"]) if cache else None)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=dev.type == "cuda")
    preds, written = [], 0
    with tqdm(total=len(ds), desc="infer", unit="img", disable=not progress) as bar:
        for x, y, idx in loader:
            s = score(model, x.to(dev), r)
            for j, i in enumerate(idx.tolist()):
                labels = [c for c, v in zip(classes, y[j].tolist()) if v > 0.5] if ds.has_labels else None
                preds.append(prediction_record(ds.names[i], classes, s, j, labels))
                if vis_dir and written < vis_limit:
                    write_vis(vis_dir, ds.names[i], model, s, j)
                    written += 1
            bar.update(len(idx))
    result = {"checkpoint": str(checkpoint), "classes": classes, "keep_ratio": r, "img_size": cfg["img_size"],
              "fill": fill_text(cfg), "predictions": preds}
    write_json(result, out)
    return result


def infer_image(checkpoint: str, image: str, keep_ratio: float | None = None, out: str | None = None,
                save_mask: str | None = None, save_crop: str | None = None, vis_dir: str | None = None,
                device: str = "auto") -> dict:
    dev = pick_device(device)
    model, cfg = load_trained(checkpoint, dev)
    classes, r = cfg["classes"], keep_ratio if keep_ratio is not None else cfg["keep_ratio"]
    x = load_image(image, cfg["img_size"]).float().div_(255).unsqueeze(0).to(dev)
    s = score(model, x, r)
    rec = prediction_record(Path(image).name, classes, s, 0, None)
    if save_mask:
        save_png((s["mask"][0, 0].cpu().numpy() * 255).astype(np.uint8), save_mask)
    if save_crop:
        save_png(to_gray(model.crop_drop(s["xn"][:1], s["mask"][:1])[0][0], model), save_crop)
    if vis_dir:
        write_vis(vis_dir, Path(image).name, model, s, 0)
    result = {"checkpoint": str(checkpoint), "classes": classes, "keep_ratio": r, "img_size": cfg["img_size"],
              "fill": fill_text(cfg), "predictions": [rec]}
    if out:
        write_json(result, out)
    return result


def format_table(rec: dict) -> str:
    """The single-image table: one row per class, sorted by p_full."""
    lines = [f"{'class':20s} {'p_full':>8s} {'p_crop':>8s} {'p_drop':>8s} {'faithful':>9s}"]
    for c in sorted(rec["prob_full"], key=lambda c: -rec["prob_full"][c]):
        lines.append(f"{c:20s} {rec['prob_full'][c]:8.4f} {rec['prob_crop'][c]:8.4f} {rec['prob_drop'][c]:8.4f} "
                     f"{rec['faithfulness'][c]:+9.4f}")
    return "\n".join(lines)
