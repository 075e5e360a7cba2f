"""Metrics as pure numpy functions (no files, no devices). A label of NaN is unknown (data/labels.py): every
per-class figure leaves those images out of that class."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from roi_consistency.model.config import THRESHOLD_RULES


def known(col: np.ndarray) -> np.ndarray:
    """Which images a label column labels (not NaN)."""
    return ~np.isnan(np.asarray(col, np.float64))


def per_class_auroc(y_true: np.ndarray, y_score: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    """AUROC per class over its known labels; None where they hold one value only (AUROC is undefined)."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    out: dict[str, float | None] = {}
    for j, name in enumerate(classes):
        k = known(y_true[:, j])
        col = y_true[k, j] > 0.5
        out[name] = None if col.all() or not col.any() else float(roc_auc_score(col, y_score[k, j]))
    return out


def mean_auroc(per_class: dict[str, float | None]) -> float | None:
    vals = [v for v in per_class.values() if v is not None]
    return float(np.mean(vals)) if vals else None


def comprehensiveness(p_full: np.ndarray, p_drop: np.ndarray, y: np.ndarray) -> float | None:
    """Mean of p_full - p_drop over (image, class) pairs where the class is a true finding."""
    pos = np.asarray(y) > 0.5
    return float(np.mean(np.asarray(p_full)[pos] - np.asarray(p_drop)[pos])) if pos.any() else None


def sufficiency(p_full: np.ndarray, p_crop: np.ndarray, y: np.ndarray) -> float | None:
    """Mean of p_full - p_crop over the same pairs: small means the kept region suffices."""
    return comprehensiveness(p_full, p_crop, y)


def box_mask(shape: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """Pixels whose centre lies inside the box (x, y, w, h), in the map's pixel coordinates."""
    h, w = shape
    x0, y0, bw, bh = box
    cx, cy = np.arange(w) + 0.5, np.arange(h) + 0.5
    return ((cy >= y0) & (cy <= y0 + bh))[:, None] & ((cx >= x0) & (cx <= x0 + bw))[None, :]


def peak(saliency: np.ndarray) -> tuple[float, float]:
    """Where the map points, (x, y) in pixel units (a pixel's centre is at +0.5): its maximum, or for tied
    maxima (a saturated map) their centroid, so a flat map points at the middle of its plateau, never at the
    first index."""
    s = np.asarray(saliency, dtype=np.float64)
    ys, xs = np.nonzero(s == s.max())
    return xs.mean() + 0.5, ys.mean() + 0.5


def pointing_hit(saliency: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Does the box contain the map's peak?"""
    cx, cy = peak(saliency)
    x0, y0, bw, bh = box
    return bool(x0 <= cx <= x0 + bw and y0 <= cy <= y0 + bh)


def pointing_in(saliency: np.ndarray, truth: np.ndarray) -> bool:
    """Does the region `truth` (bool, the map's shape) hold the map's peak, the pixel its point falls in?"""
    cx, cy = peak(saliency)
    return bool(truth[min(int(cy), truth.shape[0] - 1), min(int(cx), truth.shape[1] - 1)])


def share_and_iou(region: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """|region ∩ truth| / |region| (IoBB with a mask for the box) and / |region ∪ truth| (IoU)."""
    inter = float((region & truth).sum())
    return inter / max(float(region.sum()), 1.0), inter / max(float((region | truth).sum()), 1.0)


def iobb(region: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """|region ∩ box| / |region| (Wang et al. 2017), region a binary map."""
    r = np.asarray(region).astype(bool)
    n = r.sum()
    return float((r & box_mask(r.shape, box)).sum() / n) if n else 0.0


def mask_leakage(features: np.ndarray, y: np.ndarray, classes: list[str], folds: int = 5, seed: int = 0) -> dict:
    """How well the labels can be predicted from the binary mask alone (Jethani et al. 2021).

    `features` is one row per image (e.g. the mask average-pooled to 16x16). Per class, a logistic
    regression is cross-validated and its out-of-fold AUROC reported; ~0.5 means the mask's shape does
    not encode the answer. Classes with fewer than two examples of either label are None."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    out: dict[str, float | None] = {}
    for j, name in enumerate(classes):
        rows = known(np.asarray(y)[:, j])
        col = np.asarray(y)[rows, j] > 0.5
        k = min(folds, int(col.sum()), int((~col).sum()))
        if k < 2:
            out[name] = None
            continue
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        p = cross_val_predict(LogisticRegression(max_iter=2000), x[rows], col, cv=cv, method="predict_proba")[:, 1]
        out[name] = float(roc_auc_score(col, p))
    return {"per_class": out, "mean_auroc": mean_auroc(out)}


def roc_curves(y_true: np.ndarray, y_score: np.ndarray, classes: list[str], auroc: dict) -> dict:
    """{class: {"fpr", "tpr", "auc"}} for every class with a defined AUROC."""
    from sklearn.metrics import roc_curve
    out = {}
    for j, c in enumerate(classes):
        if auroc.get(c) is not None:
            k = known(y_true[:, j])
            fpr, tpr, _ = roc_curve(y_true[k, j] > 0.5, y_score[k, j])
            out[c] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auroc[c]}
    return out


N_RESAMPLES = 1000  # bootstrap resamples of the test images, as CheXlocalize


def resample_counts(n_images: int, n: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n, n_images]: how often each test image is drawn in each bootstrap resample (seeded)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n_images, n_images), minlength=n_images) for _ in range(n)]
                    ).astype(np.float32)


def _boot_means(values: np.ndarray, image_of: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The mean of per-unit values (pairs or boxes, each of one image) in every resample of the images."""
    n = counts.shape[1]
    s = counts @ np.bincount(image_of, weights=values, minlength=n)
    k = counts @ np.bincount(image_of, minlength=n).astype(np.float64)
    return s[k > 0] / k[k > 0]


def mean_ci(values, image_of, counts: np.ndarray) -> dict:
    """{"mean", "ci95": [lo, hi]}: the mean of per-unit values and its 95 % percentile bootstrap interval,
    resampling test images (a unit's image carries all its units along)."""
    v, img = np.asarray(values, np.float64), np.asarray(image_of, np.int64)
    if not len(v):
        return {"mean": None, "ci95": None}
    b = _boot_means(v, img, counts)
    return {"mean": float(v.mean()), "ci95": [float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))]}


def paired_test(a, b, image_of, counts: np.ndarray) -> dict:
    """a - b over the same units: the mean difference, its 95 % CI, and the two-sided bootstrap p-value
    of no difference (twice the share of resamples on the far side of zero)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if not len(d):
        return {"difference": None, "ci95": None, "p": None}
    boot = _boot_means(d, np.asarray(image_of, np.int64), counts)
    p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    return {"difference": float(d.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "p": p}


def _resampled_auroc(y: np.ndarray, score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One class's AUROC in every resample at once (NaN where a resample lacks a label value): the
    weighted Mann-Whitney statistic, ties counting half, over the scores sorted once."""
    if not len(y):  # a class without a known label
        return np.full(len(counts), np.nan)
    order = np.argsort(score, kind="stable")
    s, pos = score[order], y[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # one group per distinct score
    w = counts[:, order].astype(np.float64)
    wp, wn = np.add.reduceat(w * pos, starts, axis=1), np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    tot_p, tot_n = wp.sum(1), wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((tot_p > 0) & (tot_n > 0), (wp * (below + 0.5 * wn)).sum(1) / (tot_p * tot_n), np.nan)


def mean_auroc_ci(y_true: np.ndarray, y_score: np.ndarray, counts: np.ndarray) -> list[float] | None:
    """95 % bootstrap interval of the mean AUROC over classes (each resample's defined classes)."""
    y, score = np.asarray(y_true), np.asarray(y_score)
    per_class = np.stack([_resampled_auroc(y[k, j] > 0.5, score[k, j], counts[:, k])
                          for j in range(y.shape[1]) for k in [known(y[:, j])]])
    defined = ~np.isnan(per_class).all(0)
    if not defined.any():
        return None
    stats = np.nanmean(per_class[:, defined], axis=0)
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def _threshold(col: np.ndarray, score: np.ndarray, rule: str) -> float:
    """The probability at or above which a finding is called positive: the ROC point furthest above the
    chance line (Youden's J = sensitivity + specificity - 1), or the precision-recall point of best F1."""
    from sklearn.metrics import precision_recall_curve, roc_curve
    if rule == "youden":
        fpr, tpr, th = roc_curve(col, score)
        j = tpr - fpr
        j[0] = -np.inf  # sklearn's first threshold is +inf: nobody positive
        return float(th[int(np.argmax(j))])
    prec, rec, th = precision_recall_curve(col, score)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * prec[:-1] * rec[:-1] / (prec[:-1] + rec[:-1]))
    return float(th[int(np.argmax(f1))])


def choose_thresholds(y_true: np.ndarray, y_score: np.ndarray, classes: list[str],
                      rule: str = "youden") -> dict[str, float | None]:
    """Per-class operating points (THRESHOLD_RULES) on a labelled set, the validation set; None where a
    class lacks positives or negatives there."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}: choose from {', '.join(THRESHOLD_RULES)}")
    y, p = np.asarray(y_true), np.asarray(y_score, np.float64)
    out = {}
    for j, c in enumerate(classes):
        k = known(y[:, j])
        col = y[k, j] > 0.5
        out[c] = None if col.all() or not col.any() else _threshold(col, p[k, j], rule)
    return out


ECE_BINS = 15


def calibration_bins(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Reliability of probabilities p against labels y (any shape, flattened): per equal-width bin of p,
    its count, mean probability and observed frequency (None where empty), and the expected calibration
    error, the count-weighted mean gap |frequency - probability| (Naeini et al. 2015). Unknown labels are
    left out."""
    y, p = np.asarray(y, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    y, p = y[known(y)], p[known(y)]
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    n = np.bincount(b, minlength=bins)
    sp, sy = np.bincount(b, weights=p, minlength=bins), np.bincount(b, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf, freq = sp / n, sy / n
    ece = float(np.abs(sy - sp).sum() / max(n.sum(), 1))
    return {"count": n.tolist(), "confidence": [None if k == 0 else float(v) for k, v in zip(n, conf)],
            "frequency": [None if k == 0 else float(v) for k, v in zip(n, freq)], "ece": ece}


def resampled_ece(y: np.ndarray, p: np.ndarray, counts: np.ndarray, bins: int = ECE_BINS) -> list[float] | None:
    """95 % bootstrap interval of one class's ECE: each resample reweights the images (counts [R, n]) with a
    known label."""
    k = known(y)
    y, p, counts = np.asarray(y, np.float64)[k], np.asarray(p, np.float64)[k], counts[:, k]
    onehot = np.eye(bins)[np.minimum((p * bins).astype(np.int64), bins - 1)]  # [n, bins]
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample may draw no image with a known label
        gap = np.abs(counts @ (onehot * (y - p)[:, None])).sum(1) / counts.sum(1)
    return [float(np.nanpercentile(gap, 2.5)), float(np.nanpercentile(gap, 97.5))] if len(y) else None


def operating_point(y: np.ndarray, p: np.ndarray, threshold: float, counts: np.ndarray) -> dict:
    """Sensitivity and specificity of one class at a threshold, with 95 % bootstrap intervals, over the images
    whose label is known."""
    img = np.flatnonzero(known(y))
    y, called = np.asarray(y)[img] > 0.5, np.asarray(p)[img] >= threshold
    sens = mean_ci(called[y].astype(np.float64), img[y], counts)
    spec = mean_ci((~called[~y]).astype(np.float64), img[~y], counts)
    return {"threshold": threshold, "n_pos": int(y.sum()), "n_neg": int((~y).sum()),
            "sensitivity": sens["mean"], "sensitivity_ci95": sens["ci95"],
            "specificity": spec["mean"], "specificity_ci95": spec["ci95"]}
