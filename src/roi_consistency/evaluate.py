"""Evaluation against ground truth: AUROC of full/crop/drop, faithfulness (comprehensiveness and
sufficiency over keep ratios) and localisation against boxes, for three maps on the same model:

- learned: the mask network's logits;
- gradcam: Grad-CAM (pytorch-grad-cam) on the backbone's last stage, one map per (image, class);
- random:  smooth random logits, the control.

Every map is binarised to its own exact top-r pixels and removed pixels get the same fill (the
ImageNet mean), so the three are compared on equal terms. Ties in a map (Grad-CAM's ReLU makes many
zeros) are broken by a tiny seeded jitter for top-r, never by pixel index.

    roi-consistency evaluate --checkpoint ck.pt --csv nih_roi_test.csv --image-root images \
        --bbox BBox_List_2017.csv --out-dir eval
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_curve
from torch.utils.data import DataLoader
from tqdm import tqdm

from roi_consistency import metrics as M
from roi_consistency.cache import ImageCache
from roi_consistency.data import ImageCSVDataset
from roi_consistency.errors import UserError
from roi_consistency.infer import FILL, load_trained, pick_device, to_gray, write_json
from roi_consistency.labels import LabelError, canonical
from roi_consistency.model import ROIModel, random_mask_logits, topk_mask

MAPS = ("learned", "gradcam", "random")
IOBB_T = ("0.1", "0.25", "0.5")


def read_boxes(path: str | Path) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """BBox_List_2017.csv -> {image: [(finding, x, y, w, h)]} in the PNG's own pixels. Only the first
    six fields of a row are read (the header has three empty trailing names)."""
    boxes = defaultdict(list)
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        for line_no, row in enumerate(rows, start=2):
            if not row or not row[0].strip():
                continue
            try:
                boxes[row[0].strip()].append((canonical(row[1]), *map(float, row[2:6])))
            except (LabelError, ValueError, IndexError) as exc:
                raise UserError(f"{path} line {line_no}: {exc}") from None
    return dict(boxes)


def scale_box(box, src_size: tuple[int, int], dst: int):
    """Scale (x, y, w, h) from the PNG's pixel size (w, h) to the model's dst x dst input."""
    sx, sy = dst / src_size[0], dst / src_size[1]
    x, y, w, h = box
    return (x * sx, y * sy, w * sx, h * sy)


def gradcam_layer(backbone: torch.nn.Module) -> torch.nn.Module:
    """The last convolutional stage, where Grad-CAM is usually taken."""
    if hasattr(backbone, "layer4"):
        return backbone.layer4[-1]
    if hasattr(backbone, "features"):
        return backbone.features[-1] if isinstance(backbone.features, torch.nn.Sequential) else backbone.features
    raise UserError("Grad-CAM: this backbone has no layer4/features stage; pick a CNN backbone")


def gradcam_maps(backbone: torch.nn.Module, xn: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Grad-CAM maps [P,1,H,W] for pairs (xn[p], classes[p]), at the input's size. The hooks live only
    for this call, so the many other backbone calls of an evaluation stay unhooked."""
    from pytorch_grad_cam import GradCAM  # imported here: it pulls in OpenCV, which only evaluation needs
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    with torch.enable_grad(), GradCAM(model=backbone, target_layers=[gradcam_layer(backbone)]) as cam:
        g = cam(input_tensor=xn, targets=[ClassifierOutputTarget(c) for c in classes])
    return torch.from_numpy(np.asarray(g, dtype=np.float32)).unsqueeze(1).to(xn.device)


@torch.no_grad()
def _probs(model: ROIModel, xn: torch.Tensor, m: torch.Tensor):
    out = torch.sigmoid(model.backbone(torch.cat([xn * m, xn * (1 - m)])).float())
    return out.chunk(2)  # crop, drop


def evaluate_checkpoint(checkpoint: str, csv_path: str, image_root: str, bbox: str | None = None,
                        out_dir: str = "eval", keep_ratios=(0.01, 0.05, 0.1, 0.2, 0.5), batch_size: int = 16,
                        device: str = "auto", n_examples: int = 8, seed: int = 0, workers: int = 2,
                        progress: bool = True, cache: str | None = None) -> dict:
    dev = pick_device(device)
    model, cfg = load_trained(checkpoint, dev)
    classes, size, r0 = cfg["classes"], cfg["img_size"], cfg["keep_ratio"]
    ratios = sorted(set(float(r) for r in keep_ratios) | {r0})
    ds = ImageCSVDataset(csv_path, image_root, size, classes, cache=ImageCache(cache, size) if cache else None)
    if not ds.has_labels:
        raise UserError(f"{csv_path}: evaluation needs a labels column")
    all_boxes = read_boxes(bbox) if bbox else {}
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    gradcam_layer(model.backbone)  # fail early for a backbone Grad-CAM cannot use
    gen = torch.Generator().manual_seed(seed)
    n, C = len(ds), len(classes)
    p_full = np.zeros((n, C), np.float32)
    y = ds.labels
    crop = {k: {r: np.full((n, C), np.nan, np.float32) for r in ratios} for k in MAPS}
    drop = {k: {r: np.full((n, C), np.nan, np.float32) for r in ratios} for k in MAPS}
    kept = {k: [] for k in MAPS}
    pooled = {"learned": [], "random": []}  # the r0 masks at 16x16, for the leakage check
    loc = {k: {"hits": [], "iobb": []} for k in MAPS}
    examples = []
    for x, _, idx in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        x, idx = x.to(dev), idx.numpy()
        with torch.no_grad():
            xn = model.normalize(x)
            p_full[idx] = torch.sigmoid(model.backbone(xn).float()).cpu().numpy()
            learned = model.mask_logits(xn) if model.mode != "random_mask" else random_mask_logits(
                xn.shape, "cpu", gen).to(dev)
            rand = random_mask_logits(xn.shape, "cpu", gen).to(dev)
        # (image, class) pairs: true findings, plus box classes for localisation
        names = [ds.names[i] for i in idx]
        pairs = sorted({(b, c) for b, i in enumerate(idx) for c in np.flatnonzero(y[i] > 0.5)}
                       | {(b, classes.index(bx[0])) for b, nm in enumerate(names) for bx in all_boxes.get(nm, ())
                          if bx[0] in classes})
        pb = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=dev)
        pc = [int(p[1]) for p in pairs]
        gc = gradcam_maps(model.backbone, xn[pb], pc) if pairs else None
        jitter = 1e-6 * torch.rand((len(pairs), 1, size, size), generator=gen).to(dev) if pairs else None
        # Away from the model's own ratio only images with a finding count (comprehensiveness and
        # sufficiency average over true findings), so normal images are scored once, at r0.
        has_pos = torch.from_numpy(np.flatnonzero(y[idx].max(axis=1) > 0.5)).to(dev)
        for r in ratios:
            rows_b = torch.arange(len(idx), device=dev) if r == r0 else has_pos
            for key, mp in (("learned", learned), ("random", rand)):
                if not len(rows_b):
                    break
                m = topk_mask(mp[rows_b], r)
                c_, d_ = _probs(model, xn[rows_b], m)
                rows = idx[rows_b.cpu().numpy()]
                crop[key][r][rows], drop[key][r][rows] = c_.cpu().numpy(), d_.cpu().numpy()
                if r == r0:
                    kept[key].append(m.mean(dim=(1, 2, 3)).cpu().numpy())
                    pooled[key].append(F.adaptive_avg_pool2d(m, 16).flatten(1).cpu().numpy())
            if pairs:
                m = topk_mask(gc + jitter, r)
                c_, d_ = _probs(model, xn[pb], m)
                rows = idx[pb.cpu().numpy()]
                crop["gradcam"][r][rows, pc] = c_.cpu().numpy()[np.arange(len(pc)), pc]
                drop["gradcam"][r][rows, pc] = d_.cpu().numpy()[np.arange(len(pc)), pc]
                if r == r0:
                    kept["gradcam"].append(m.mean(dim=(1, 2, 3)).cpu().numpy())
        # localisation on images with boxes; example images for the report
        pair_pos = {p: k for k, p in enumerate(pairs)}
        for b, nm in enumerate(names):
            bxs = [bx for bx in all_boxes.get(nm, ()) if bx[0] in classes]
            true = [classes[c] for c in np.flatnonzero(y[idx[b]] > 0.5)]
            src = None
            for label, *box in bxs:
                if src is None:
                    with Image.open(Path(image_root) / nm) as im:
                        src = im.size  # boxes are in the PNG's own pixels
                sbox = scale_box(box, src, size)
                k = pair_pos[(b, classes.index(label))]
                for key, mp, tie in (("learned", learned[b, 0], 0), ("gradcam", gc[k, 0], jitter[k, 0]),
                                     ("random", rand[b, 0], 0)):
                    loc[key]["hits"].append(M.pointing_hit(mp.cpu().numpy(), sbox))
                    loc[key]["iobb"].append(M.iobb(topk_mask((mp + tie)[None, None], r0)[0, 0].cpu().numpy(), sbox))
            wanted = bxs if all_boxes else true  # with a box file, show boxed images
            if wanted and len(examples) < n_examples:
                first = bxs[0][0] if bxs else true[0]
                k = pair_pos[(b, classes.index(first))]
                maps_b = {"learned": (learned[b, 0], 0), "gradcam": (gc[k, 0], jitter[k, 0]), "random": (rand[b, 0], 0)}
                examples.append(_example(model, xn[b], nm, classes, y[idx[b]], bxs, src, size, maps_b, r0))
    result = {
        "n_images": n, "classes": classes, "keep_ratio": r0, "keep_ratios": ratios, "checkpoint": str(checkpoint),
        "fill": FILL,
        "auroc": {"full": M.per_class_auroc(y, p_full, classes),
                  "crop": M.per_class_auroc(y, crop["learned"][r0], classes),
                  "drop": M.per_class_auroc(y, drop["learned"][r0], classes)},
        "faithfulness": {k: {"comprehensiveness": {str(r): M.comprehensiveness(p_full, drop[k][r], y) for r in ratios},
                             "sufficiency": {str(r): M.sufficiency(p_full, crop[k][r], y) for r in ratios}}
                         for k in MAPS},
        "kept_fraction": {k: float(np.concatenate(v).mean()) if v else None for k, v in kept.items()},
        "localization": None,
        # Can the labels be read off the mask's shape alone? ~0.5 is good; the random mask is the control.
        "leakage": {k: M.mask_leakage(np.concatenate(v), y, classes, seed=seed) for k, v in pooled.items()},
    }
    result["mean_auroc"] = {k: M.mean_auroc(v) for k, v in result["auroc"].items()}
    if bbox:
        result["localization"] = {"n_boxes": len(loc["learned"]["hits"]), **{
            k: {"pointing_game": float(np.mean(v["hits"])) if v["hits"] else None,
                "iobb_acc": {t: float(np.mean(np.array(v["iobb"]) > float(t))) if v["iobb"] else None
                             for t in IOBB_T}} for k, v in loc.items()}}
    out = Path(out_dir)
    write_json(result, out / "metrics.json")
    from roi_consistency.report import write_report
    roc = {}
    for j, c in enumerate(classes):
        if result["auroc"]["full"][c] is not None:
            fpr, tpr, _ = roc_curve(y[:, j], p_full[:, j])
            roc[c] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": result["auroc"]["full"][c]}
    write_report(out / "report.html", result, roc, examples)
    return result


def _example(model, xn, name, classes, yrow, boxes, src, size, maps, r) -> dict:
    """One row of the report's example grid: the image, its boxes, each map's heat and top-r region,
    and the probabilities of the true findings with each map's region kept or removed."""
    ex_maps = {}
    for key, (mp, tie) in maps.items():
        heat = mp.float().cpu().numpy()  # shown without the tie-breaking jitter, which is only for top-r
        ex_maps[key] = {"heat": (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12),
                        "mask": topk_mask((mp + tie)[None, None].float(), r)[0, 0].cpu().numpy() > 0.5}
    labels = [c for c, v in zip(classes, yrow) if v > 0.5]
    return {"image": name, "labels": labels, "gray": to_gray(xn, model),
            "boxes": [(b[0], *scale_box(b[1:], src, size)) for b in boxes], "maps": ex_maps,
            "probs": _example_probs(model, xn, classes, labels, maps["learned"][0], r)}


@torch.no_grad()
def _example_probs(model, xn, classes, labels, learned, r) -> dict:
    m = topk_mask(learned[None, None].float(), r)
    out = torch.sigmoid(model.backbone(torch.cat([xn[None], xn[None] * m, xn[None] * (1 - m)])).float())
    return {k: {c: float(out[j, classes.index(c)]) for c in labels} for j, k in enumerate(("full", "crop", "drop"))}
