"""metrics.json from what the passes collected (passes.Tally): every figure, per explainer, with its
bootstrap interval where it has one. The schema: schema.py.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from roi_consistency.evaluation import metrics as M
from roi_consistency.evaluation.calibration import calibration_section
from roi_consistency.evaluation.curves import curves_section
from roi_consistency.evaluation.passes import POOL, Tally
from roi_consistency.evaluation.schema import IOBB_T, SIZES, ratio_key
from roi_consistency.model.config import FILLS


def faithfulness(t: Tally, y: np.ndarray) -> dict:
    return {k: {"comprehensiveness": {ratio_key(r): M.comprehensiveness(t.p_full, t.drop[k][r], y) for r in t.ratios},
                "sufficiency": {ratio_key(r): M.sufficiency(t.p_full, t.crop[k][r], y) for r in t.ratios}}
            for k in t.crop}


def road(t: Tally, y: np.ndarray) -> dict:
    """ROAD's figures, defined as comprehensiveness (MoRF) and sufficiency (LeRF) are, per ratio."""
    return {k: {"morf": {ratio_key(r): M.comprehensiveness(t.p_full, t.road_morf[k][r], y) for r in t.road_ratios},
                "lerf": {ratio_key(r): M.sufficiency(t.p_full, t.road_lerf[k][r], y) for r in t.road_ratios}}
            for k in t.road_morf}


def localisation(t: Tally) -> dict:
    """Pointing game and IoBB accuracy per map, over every box, and pointing per finding."""
    by_class = sorted(set(t.loc_class), key=t.classes.index)
    out = {"n_boxes": len(t.loc_class)}
    for k in t.hits:
        hits, iobb = np.array(t.hits[k], bool), np.array(t.iobb[k])
        out[k] = {"pointing_game": float(hits.mean()) if len(hits) else None,
                  "pointing_by_class": {c: float(hits[[lc == c for lc in t.loc_class]].mean()) for c in by_class},
                  "iobb_acc": {th: float(np.mean(iobb > float(th))) if len(iobb) else None for th in IOBB_T}}
    return out


def localisation_masks(t: Tally) -> dict | None:
    """Against ground-truth masks, per map: pointing, the share of the top-r region inside the mask, and
    their IoU, over every mask, and pointing per finding (None: no mask was scored)."""
    if not t.mask_class:
        return None
    by_class = sorted(set(t.mask_class), key=t.classes.index)
    out: dict = {"n_masks": len(t.mask_class)}
    for k, scores in t.mask_scores.items():
        s = np.array(scores, np.float64)
        out[k] = {"pointing": float(s[:, 0].mean()), "share": float(s[:, 1].mean()), "iou": float(s[:, 2].mean()),
                  "pointing_by_class": {c: float(s[[m == c for m in t.mask_class], 0].mean()) for c in by_class}}
    return out


def by_lesion_size(t: Tally) -> dict:
    """Pointing and IoBB > 0.1 per tercile of box area, per map: small lesions (nodules) are where every
    map is weakest. Areas are shares of the image; the cut points are the boxes' own terciles."""
    area = np.array([bp[4] for bp in t.box_probs])
    cuts = np.quantile(area, [1 / 3, 2 / 3]) if len(area) else np.array([np.nan, np.nan])
    tercile = np.digitize(area, cuts)  # 0: below the first cut, 2: at or above the second
    out = {"cut_points": [float(c) for c in cuts], "n": {n: int((tercile == i).sum()) for i, n in enumerate(SIZES)}}
    for k in t.hits:
        hits, iobb = np.array(t.hits[k], bool), np.array(t.iobb[k])
        out[k] = {n: {"pointing_game": float(hits[tercile == i].mean()) if (tercile == i).any() else None,
                      "iobb_acc_0.1": float((iobb[tercile == i] > 0.1).mean()) if (tercile == i).any() else None}
                  for i, n in enumerate(SIZES)}
    return out


def box_control(t: Tally) -> dict:
    """How much the model relies on the true lesion region, per finding."""
    keys = ("p_full", "p_drop_box", "p_crop_box", "box_area")
    by_class = sorted({bp[0] for bp in t.box_probs}, key=t.classes.index)
    return {c: {"n": len(rows), **dict(zip(keys, np.mean(rows, axis=0).tolist()))}
            for c in by_class for rows in [[bp[1:] for bp in t.box_probs if bp[0] == c]]}


def leakage(t: Tally, y: np.ndarray, seed: int) -> tuple[dict, dict | None]:
    """Can the labels be read off the mask's shape alone? ~0.5 is good; the random map is the control.
    Where findings sit in fixed places, even a perfect localiser "leaks" the label, so on the boxed
    images the ground-truth boxes themselves are the reference a mask should not exceed."""
    all_images = {k: M.mask_leakage(v, y, t.classes, seed=seed) for k, v in t.pooled.items()}
    if not t.box_pooled:
        return all_images, None
    rows = np.array(sorted(t.box_pooled))
    feats = {k: v[rows] for k, v in t.pooled.items()}
    feats["boxes"] = np.stack([F.adaptive_avg_pool2d(torch.from_numpy(t.box_pooled[i]).float()[None], POOL)
                               .flatten().numpy() for i in rows])
    return all_images, {"n_images": int(len(rows)),
                        **{k: M.mask_leakage(v, y[rows], t.classes, seed=seed) for k, v in feats.items()}}


def uncertainty(t: Tally, y: np.ndarray, r0: float, counts: np.ndarray, seed: int) -> dict:
    """95 % bootstrap intervals of the headline figures, from the same resamples of the test images
    (`counts`, seeded), and paired bootstrap tests of the learned map against Grad-CAM."""
    pi, pc = np.nonzero(y > 0.5)  # the (image, true finding) pairs the removal figures average over
    boxes = np.array(t.loc_row, np.int64)
    units = {}
    for k in t.crop:
        units[k] = {"comprehensiveness": (t.p_full[pi, pc] - t.drop[k][r0][pi, pc], pi),
                    "sufficiency": (t.p_full[pi, pc] - t.crop[k][r0][pi, pc], pi),
                    "road_morf": (t.p_full[pi, pc] - t.road_morf[k][r0][pi, pc], pi),
                    "road_lerf": (t.p_full[pi, pc] - t.road_lerf[k][r0][pi, pc], pi)}
        if t.hits[k]:
            units[k]["pointing_game"] = (np.array(t.hits[k], np.float64), boxes)
            units[k]["iobb_0.1"] = ((np.array(t.iobb[k]) > 0.1).astype(np.float64), boxes)
    out = {"n_resamples": len(counts), "seed": seed, "level": 0.95,
           "mean_auroc_full": M.mean_auroc_ci(y, t.p_full, counts),
           "maps": {k: {f: M.mean_ci(v, img, counts) for f, (v, img) in u.items()} for k, u in units.items()}}
    if {"learned", "gradcam"} <= set(units):
        a, b = units["learned"], units["gradcam"]
        out["learned_vs_gradcam"] = {f: M.paired_test(a[f][0], b[f][0], a[f][1], counts)
                                     for f in ("comprehensiveness", "road_morf", "pointing_game") if f in a}
    return out


def summarize(t: Tally, y: np.ndarray, cfg, checkpoint: str, with_boxes: bool, seed: int, thresholds: dict | None,
              csv_path: str, curve_images: int | None = None) -> dict:
    """metrics.json (schema.py) but what the evaluate command adds: every figure, per explainer."""
    classes, r0 = t.classes, cfg.method.keep_ratio
    counts = M.resample_counts(len(y), seed=seed)
    auroc = {"full": M.per_class_auroc(y, t.p_full, classes),
             "crop": {k: M.per_class_auroc(y, v, classes) for k, v in t.crop_img.items()},
             "drop": {k: M.per_class_auroc(y, v, classes) for k, v in t.drop_img.items()}}
    leak, leak_boxed = leakage(t, y, seed)
    return {"n_images": int(len(y)), "classes": classes, "keep_ratio": r0, "keep_ratios": t.ratios,
            "road_ratios": t.road_ratios,
            "checkpoint": str(checkpoint), "fill": FILLS[cfg.method.fill], "maps": list(t.crop),
            "auroc": auroc,
            "mean_auroc": {"full": M.mean_auroc(auroc["full"]),
                           **{s: {k: M.mean_auroc(v) for k, v in auroc[s].items()} for s in ("crop", "drop")}},
            "faithfulness": faithfulness(t, y), "road": road(t, y),
            "kept_fraction": {k: float(np.concatenate(v).mean()) if v else None for k, v in t.kept.items()},
            "localisation": localisation(t) if with_boxes else None,
            "localisation_masks": localisation_masks(t),
            "box_control": box_control(t) if with_boxes else None,
            "localisation_by_size": by_lesion_size(t) if with_boxes else None,
            "leakage": leak, "leakage_boxed": leak_boxed, "uncertainty": uncertainty(t, y, r0, counts, seed),
            "curves": curves_section(t.curves, counts, list(t.crop), curve_images, int(t.n_curve_candidates)),
            "calibration": calibration_section(y, t.p_full, classes, thresholds, counts, csv_path)}
