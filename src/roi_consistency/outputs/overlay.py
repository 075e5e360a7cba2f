"""A map drawn over its image: the picture infer's --vis-dir, the gallery's cards and their detail views use."""
from __future__ import annotations

import numpy as np


def overlay(gray: np.ndarray, map_: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8: the image with the map (any range) as a jet overlay and the mask's outline in green."""
    from matplotlib import colormaps
    h = (map_ - map_.min()) / max(float(map_.max() - map_.min()), 1e-12)
    rgb = 0.55 * np.repeat(gray[..., None], 3, axis=2) + 0.45 * colormaps["jet"](h)[..., :3]
    r = mask.astype(bool)
    inner = r.copy()
    inner[1:-1, 1:-1] = r[1:-1, 1:-1] & r[:-2, 1:-1] & r[2:, 1:-1] & r[1:-1, :-2] & r[1:-1, 2:]
    rgb[r & ~inner] = (0.0, 1.0, 0.0)
    return (rgb.clip(0, 1) * 255).astype(np.uint8)
