"""metrics.json's calibration section: ECE with intervals, the reliability diagram's bins, and sensitivity
and specificity at the stored operating points (thresholds.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from roi_consistency.evaluation import metrics as M


def calibration_section(y: np.ndarray, p: np.ndarray, classes: list[str], thresholds: dict | None,
                        counts: np.ndarray, csv: str) -> dict:
    """metrics.json's calibration: per class the ECE (15 bins) with its bootstrap interval and, at the
    checkpoint's thresholds, sensitivity and specificity with theirs; and the reliability diagram's bins
    over every (image, class) pair."""
    per_class = {}
    for j, c in enumerate(classes):
        labelled = M.known(y[:, j]).any()
        row = {"ece": M.calibration_bins(y[:, j], p[:, j])["ece"] if labelled else None,
               "ece_ci95": M.resampled_ece(y[:, j], p[:, j], counts), "n_pos": int((y[:, j] > 0.5).sum()),
               "n_unknown": int((~M.known(y[:, j])).sum())}
        t = thresholds["values"].get(c) if thresholds else None
        if t is not None and 0 < row["n_pos"] < len(y) - row["n_unknown"]:
            row.update(M.operating_point(y[:, j], p[:, j], t, counts))
        per_class[c] = row
    # a finding without positives in the test set is trivially calibrated near 0: it would flatter the mean
    scored = [c for c, r in per_class.items() if r["n_pos"] > 0]
    out = {"bins": M.ECE_BINS, "mean_ece": float(np.mean([per_class[c]["ece"] for c in scored])) if scored else None,
           "mean_ece_over": scored,
           "reliability": M.calibration_bins(y, p), "per_class": per_class,
           "thresholds": None if thresholds is None else {k: thresholds[k] for k in ("rule", "csv", "n_images")}}
    if thresholds and Path(thresholds["csv"]).resolve() == Path(csv).resolve():
        out["warning"] = (f"the thresholds were chosen on {csv}, the CSV evaluated here: sensitivity and "
                          "specificity are optimistic")
    return out
