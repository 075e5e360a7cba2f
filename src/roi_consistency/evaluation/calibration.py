"""Calibration and operating points: the one rule by which a finding is called positive (infer's
`positive`, the API's, the gallery's cards), and metrics.json's calibration section (ECE with intervals,
the reliability diagram's bins, sensitivity and specificity at the stored thresholds).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from roi_consistency.evaluation import metrics as M


def called(p: np.ndarray, classes: list[str], thresholds: dict | None) -> np.ndarray:
    """Which findings are called positive: p (..., classes) at or above the class's stored threshold (a
    class whose threshold is undefined, never); without thresholds, at p >= 0.5."""
    values = thresholds["values"] if thresholds else dict.fromkeys(classes, 0.5)
    t = np.array([np.inf if values.get(c) is None else values[c] for c in classes])
    return np.asarray(p) >= t


def calibration_section(y: np.ndarray, p: np.ndarray, classes: list[str], thresholds: dict | None,
                        counts: np.ndarray, csv: str) -> dict:
    """metrics.json's calibration: per class the ECE (15 bins) with its bootstrap interval and, at the
    checkpoint's thresholds, sensitivity and specificity with theirs; and the reliability diagram's bins
    over every (image, class) pair."""
    per_class = {}
    for j, c in enumerate(classes):
        row = {"ece": M.calibration_bins(y[:, j], p[:, j])["ece"],
               "ece_ci95": M.resampled_ece(y[:, j], p[:, j], counts), "n_pos": int((y[:, j] > 0.5).sum())}
        t = thresholds["values"].get(c) if thresholds else None
        if t is not None and 0 < row["n_pos"] < len(y):
            row.update(M.operating_point(y[:, j], p[:, j], t, counts))
        per_class[c] = row
    out = {"bins": M.ECE_BINS, "mean_ece": float(np.mean([r["ece"] for r in per_class.values()])),
           "reliability": M.calibration_bins(y, p), "per_class": per_class,
           "thresholds": None if thresholds is None else {k: thresholds[k] for k in ("rule", "csv", "n_images")}}
    if thresholds and Path(thresholds["csv"]).resolve() == Path(csv).resolve():
        out["warning"] = (f"the thresholds were chosen on {csv}, the CSV evaluated here: sensitivity and "
                          "specificity are optimistic")
    return out
