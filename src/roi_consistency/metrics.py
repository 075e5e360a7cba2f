"""Metrics as pure numpy functions (no files, no devices)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def per_class_auroc(y_true: np.ndarray, y_score: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    """AUROC per class; None where the column has only one label value (AUROC is undefined)."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    out: dict[str, float | None] = {}
    for j, name in enumerate(classes):
        col = y_true[:, j]
        out[name] = None if col.min() == col.max() else float(roc_auc_score(col, y_score[:, j]))
    return out


def mean_auroc(per_class: dict[str, float | None]) -> float | None:
    vals = [v for v in per_class.values() if v is not None]
    return float(np.mean(vals)) if vals else None
