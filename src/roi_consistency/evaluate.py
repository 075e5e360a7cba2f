"""Evaluation against ground truth: AUROC of full/crop/drop, faithfulness (comprehensiveness and
sufficiency over keep ratios) and localisation against boxes, for three maps on the same model:

- learned: the mask network's map before the sigmoid; where maps are class-specific (a per-class head,
  or `features_grad`, which reads a class's attribution), the map drawn for the pair's class for
  faithfulness and localisation (like Grad-CAM), and the most probable class's map per image for the
  crop/drop AUROC, the kept fraction and the leakage check (as `infer` applies it);
- gradcam: Grad-CAM (pytorch-grad-cam) on the backbone's last stage, one map per (image, class);
- random:  smooth random logits, the control.

Every map is binarised to its own exact top-r pixels and removed pixels get the same fill (the
model's: the ImageNet mean or the mean normal image), so the three are compared on equal terms. Ties
in a map (Grad-CAM's ReLU makes many zeros) are broken by a tiny seeded jitter for top-r, never by
pixel index.

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
from roi_consistency.config import mask_head_of
from roi_consistency.data import ImageCSVDataset
from roi_consistency.errors import UserError
from roi_consistency.infer import fill_text, load_trained, pick_device, to_gray, write_json
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
    out = torch.sigmoid(model.backbone(torch.cat(model.crop_drop(xn, m))).float())
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
    # The learned mask as infer applies it (one per image: where maps are class-specific, the most probable
    # class's map), at the model's own ratio: AUROC of crop and drop, kept fraction, leakage.
    crop_img, drop_img = np.full((n, C), np.nan, np.float32), np.full((n, C), np.nan, np.float32)
    kept = {k: [] for k in MAPS}
    pooled = {"learned": [], "random": []}  # the r0 masks at 16x16, for the leakage check
    box_pooled: dict[int, np.ndarray] = {}  # the union of an image's boxes at 16x16: the leakage reference
    loc = {k: {"hits": [], "iobb": []} for k in MAPS}
    loc_class: list[str] = []  # the finding of each box, in the order of the hits
    box_probs: list[tuple[str, float, float, float, float]] = []  # finding, p_full, p_drop, p_crop, area
    examples = []
    for x, _, idx in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        x, idx = x.to(dev), idx.numpy()
        with torch.no_grad():
            xn = model.normalize(x)
            random_model = model.mode == "random_mask"  # the control model: its "learned" map is random
            if random_model:
                learned, full_logits = random_mask_logits(xn.shape, "cpu", gen).to(dev), None
            else:  # the features nets compute the logits on their way to the map
                learned, _, full_logits = model.explain(xn)
            full_logits = (model.backbone(xn) if full_logits is None else full_logits).float()
            p_full[idx] = torch.sigmoid(full_logits).cpu().numpy()
            rand = random_mask_logits(xn.shape, "cpu", gen).to(dev)
        # (image, class) pairs: true findings, plus box classes for localisation
        names = [ds.names[i] for i in idx]
        pairs = sorted({(b, c) for b, i in enumerate(idx) for c in np.flatnonzero(y[i] > 0.5)}
                       | {(b, classes.index(bx[0])) for b, nm in enumerate(names) for bx in all_boxes.get(nm, ())
                          if bx[0] in classes})
        pb = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=dev)
        pc = [int(p[1]) for p in pairs]
        gc = gradcam_maps(model.backbone, xn[pb], pc) if pairs else None
        # the learned map of each pair: drawn for its class (per-class head, or a head reading the class's
        # attribution), else the image's one map
        with torch.no_grad():
            lp = (model.explain(xn[pb], torch.tensor(pc, device=dev))[0] if model.class_specific
                  and not random_model else learned[pb]) if pairs else None
        jitter = 1e-6 * torch.rand((len(pairs), 1, size, size), generator=gen).to(dev) if pairs else None
        # Away from the model's own ratio only images with a finding count (comprehensiveness and
        # sufficiency average over true findings), so normal images are scored once, at r0.
        has_pos = torch.from_numpy(np.flatnonzero(y[idx].max(axis=1) > 0.5)).to(dev)
        for r in ratios:
            rows_b = torch.arange(len(idx), device=dev) if r == r0 else has_pos
            per_image = [("random", rand, rows_b)] + ([("learned", learned, rows_b)] if r == r0 else [])
            for key, mp, rb in per_image:
                if not len(rb):
                    continue
                m = topk_mask(mp[rb], r)
                c_, d_ = _probs(model, xn[rb], m)
                rows = idx[rb.cpu().numpy()]
                if key == "learned":
                    crop_img[rows], drop_img[rows] = c_.cpu().numpy(), d_.cpu().numpy()
                else:
                    crop[key][r][rows], drop[key][r][rows] = c_.cpu().numpy(), d_.cpu().numpy()
                if r == r0:
                    kept[key].append(m.mean(dim=(1, 2, 3)).cpu().numpy())
                    pooled[key].append(F.adaptive_avg_pool2d(m, 16).flatten(1).cpu().numpy())
            for key, mp in (("learned", lp), ("gradcam", gc + jitter if pairs else None)):
                if not pairs:
                    break
                m = topk_mask(mp, r)
                c_, d_ = _probs(model, xn[pb], m)
                rows = idx[pb.cpu().numpy()]
                crop[key][r][rows, pc] = c_.cpu().numpy()[np.arange(len(pc)), pc]
                drop[key][r][rows, pc] = d_.cpu().numpy()[np.arange(len(pc)), pc]
                if r == r0 and key == "gradcam":
                    kept[key].append(m.mean(dim=(1, 2, 3)).cpu().numpy())
        # localisation on images with boxes; example images for the report
        pair_pos = {p: k for k, p in enumerate(pairs)}
        box_items: list[tuple[int, int, np.ndarray]] = []  # (row in batch, class, box mask) for the box control
        for b, nm in enumerate(names):
            bxs = [bx for bx in all_boxes.get(nm, ()) if bx[0] in classes]
            true = [classes[c] for c in np.flatnonzero(y[idx[b]] > 0.5)]
            src = None
            for label, *box in bxs:
                if src is None:
                    with Image.open(Path(image_root) / nm) as im:
                        src = im.size  # boxes are in the PNG's own pixels
                sbox = scale_box(box, src, size)
                bm = M.box_mask((size, size), sbox)
                union = box_pooled.setdefault(int(idx[b]), np.zeros((size, size), bool))
                union |= bm
                box_items.append((b, classes.index(label), bm))
                loc_class.append(label)
                k = pair_pos[(b, classes.index(label))]
                for key, mp, tie in (("learned", lp[k, 0], 0), ("gradcam", gc[k, 0], jitter[k, 0]),
                                     ("random", rand[b, 0], 0)):
                    loc[key]["hits"].append(M.pointing_hit(mp.cpu().numpy(), sbox))
                    loc[key]["iobb"].append(M.iobb(topk_mask((mp + tie)[None, None], r0)[0, 0].cpu().numpy(), sbox))
            wanted = bxs if all_boxes else true  # with a box file, show boxed images
            if wanted and len(examples) < n_examples:
                first = bxs[0][0] if bxs else true[0]
                k = pair_pos[(b, classes.index(first))]
                maps_b = {"learned": (lp[k, 0], 0), "gradcam": (gc[k, 0], jitter[k, 0]), "random": (rand[b, 0], 0)}
                examples.append(_example(model, xn[b], nm, classes, y[idx[b]], bxs, src, size, maps_b, r0))
        if box_items:  # the reference region: the true box itself removed or kept alone
            rb = torch.tensor([t[0] for t in box_items], device=dev)
            bm = torch.from_numpy(np.stack([t[2] for t in box_items])).float()[:, None].to(dev)
            c_, d_ = _probs(model, xn[rb], bm)
            for j, (b, c, m_) in enumerate(box_items):
                box_probs.append((classes[c], float(p_full[idx[b], c]), float(d_[j, c]), float(c_[j, c]),
                                  float(m_.mean())))
    result = {
        "n_images": n, "classes": classes, "keep_ratio": r0, "keep_ratios": ratios, "checkpoint": str(checkpoint),
        "fill": fill_text(cfg), "mask_head": mask_head_of(cfg),
        "auroc": {"full": M.per_class_auroc(y, p_full, classes),
                  "crop": M.per_class_auroc(y, crop_img, classes),
                  "drop": M.per_class_auroc(y, drop_img, classes)},
        "faithfulness": {k: {"comprehensiveness": {str(r): M.comprehensiveness(p_full, drop[k][r], y) for r in ratios},
                             "sufficiency": {str(r): M.sufficiency(p_full, crop[k][r], y) for r in ratios}}
                         for k in MAPS},
        "kept_fraction": {k: float(np.concatenate(v).mean()) if v else None for k, v in kept.items()},
        "localization": None,
        # Can the labels be read off the mask's shape alone? ~0.5 is good; the random mask is the control.
        "leakage": {k: M.mask_leakage(np.concatenate(v), y, classes, seed=seed) for k, v in pooled.items()},
        "leakage_boxed": None, "box_control": None,
    }
    if box_pooled:
        # Where findings sit in fixed places, even a perfect localiser "leaks" the label. On the boxed
        # images, the ground-truth boxes themselves are the reference a mask should not exceed.
        rows = np.array(sorted(box_pooled))
        feats = {k: np.concatenate(v)[rows] for k, v in pooled.items()}
        feats["boxes"] = np.stack([F.adaptive_avg_pool2d(torch.from_numpy(box_pooled[i]).float()[None], 16)
                                   .flatten().numpy() for i in rows])
        result["leakage_boxed"] = {"n_images": int(len(rows)), **{
            k: M.mask_leakage(v, y[rows], classes, seed=seed) for k, v in feats.items()}}
    result["mean_auroc"] = {k: M.mean_auroc(v) for k, v in result["auroc"].items()}
    if bbox:
        by_class = sorted(set(loc_class), key=classes.index)
        result["localization"] = {"n_boxes": len(loc["learned"]["hits"]), **{
            k: {"pointing_game": float(np.mean(v["hits"])) if v["hits"] else None,
                "pointing_by_class": {c: float(np.mean([h for h, lc in zip(v["hits"], loc_class) if lc == c]))
                                      for c in by_class},
                "iobb_acc": {t: float(np.mean(np.array(v["iobb"]) > float(t))) if v["iobb"] else None
                             for t in IOBB_T}} for k, v in loc.items()}}
        # How much the model relies on the true lesion region, per finding: if removing the box itself
        # does not lower p, no map can be both faithful and inside the box for that finding.
        result["box_control"] = {c: {"n": len(rows), **dict(zip(("p_full", "p_drop_box", "p_crop_box", "box_area"),
                                                                  np.mean(rows, axis=0).tolist()))}
                                 for c in by_class for rows in [[bp[1:] for bp in box_probs if bp[0] == c]]}
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
    out = torch.sigmoid(model.backbone(torch.cat([xn[None], *model.crop_drop(xn[None], m)])).float())
    return {k: {c: float(out[j, classes.index(c)]) for c in labels} for j, k in enumerate(("full", "crop", "drop"))}
