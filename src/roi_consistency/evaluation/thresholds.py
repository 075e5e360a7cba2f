"""The one rule by which a finding is called positive, at or above its stored threshold: infer's `positive`,
the API's and the gallery's cards use it. Plain numpy, so the API loads without scikit-learn.
"""
from __future__ import annotations

import numpy as np


def called(p: np.ndarray, classes: list[str], thresholds: dict | None) -> np.ndarray:
    """Which findings are called positive: p (..., classes) at or above the class's stored threshold (a
    class whose threshold is undefined, never); without thresholds, at p >= 0.5."""
    values = thresholds["values"] if thresholds else dict.fromkeys(classes, 0.5)
    t = np.array([np.inf if values.get(c) is None else values[c] for c in classes])
    return np.asarray(p) >= t
