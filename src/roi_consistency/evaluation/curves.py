"""Deletion and insertion curves (RISE, Petsiuk et al. 2018): comprehensiveness and sufficiency at a few
keep ratios are points of two curves, drawn here on a fine grid.

- deletion: the map's top-r pixels removed, for r from 0 to 1; a faithful map makes p fall fast, so the
  area under p(r) is small;
- insertion: only the top-r pixels kept; p should climb fast, so the area is large.

Both are drawn twice: with the model's fill, and with ROAD's imputation (road.py). r = 0 and r = 1 are
the full image and the fully removed one, which shows the fill in both (ROAD has no kept pixel to
impute from there). The area is the trapezoid rule over r in [0, 1], so it lies in [0, 1] like p.

All the grid's masks of a batch go through the backbone together, in chunks; `--curve-images N` caps the
cost by drawing N of the test images that have a finding or a box (seeded), and metrics.json records N.
"""
from __future__ import annotations

import numpy as np
import torch

from roi_consistency.evaluation import metrics as M
from roi_consistency.evaluation.road import impute
from roi_consistency.model.network import ROIModel

RATIOS = tuple(float(f"{r:.4g}") for r in np.geomspace(0.005, 1.0, 20))  # 0.5 % to 100 %, log-spaced
KINDS = ("fill", "road")
ORDERS = ("deletion", "insertion")


def sample_rows(labels: np.ndarray, names: list[str], boxes: dict, cap: int | None, seed: int):
    """The test-set rows the curves are drawn on: of those with a true finding or a box (the others have
    no pair to explain), all or `cap` drawn without replacement. Returns (rows, how many had a pair)."""
    rows = np.flatnonzero((labels > 0.5).any(1) | np.array([n in boxes for n in names], bool))
    n = len(rows)
    if cap is not None and n > cap:
        rows = np.sort(np.random.default_rng(seed).choice(rows, cap, replace=False))
    return rows, n


def prefix_masks(maps: torch.Tensor, ratios) -> torch.Tensor:
    """[R*P,1,H,W]: for each ratio (outer) and map (inner), its top-r pixels; one sort serves every ratio."""
    p, _, h, w = maps.shape
    order = maps.reshape(p, -1).float().argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=maps.device).expand(p, -1))
    ks = torch.tensor([max(1, round(r * h * w)) for r in ratios], device=maps.device)
    return (rank[None] < ks[:, None, None]).float().reshape(len(ratios) * p, 1, h, w)


@torch.no_grad()
def probs_of(model: ROIModel, xn: torch.Tensor, cls: np.ndarray, chunk: int) -> np.ndarray:
    """p of each row's class (cls repeats per row block) over a stack of normalised images, in chunks."""
    out = torch.cat([torch.sigmoid(model.backbone(part).float()) for part in xn.split(chunk)]).cpu().numpy()
    return out[np.arange(len(out)), np.resize(cls, len(out))]


@torch.no_grad()
def pair_curves(model: ROIModel, xn: torch.Tensor, cls: np.ndarray, maps: dict, gen: torch.Generator,
                chunk: int) -> dict:
    """{(kind, order, map): [P, len(RATIOS)]} of probabilities on the grid, and "full" and "empty" [P]: the
    pair's class on the full image and on the fully removed one."""
    p = len(cls)
    empty = model.crop_drop(xn, torch.zeros_like(xn[:, :1]))[0]
    out = {"full": probs_of(model, xn, cls, chunk), "empty": probs_of(model, empty, cls, chunk)}
    inner = RATIOS[:-1]  # r = 1 is known: deletion shows the empty image, insertion the full one
    group = max(1, chunk // p)  # ratios per step: about `chunk` masked images of each kind in memory at once
    for name, mp in maps.items():
        parts = [ratio_probs(model, xn, cls, mp, inner[i:i + group], gen, chunk) for i in range(0, len(inner), group)]
        for key in parts[0]:
            last = out["empty"] if key[1] == "deletion" else out["full"]
            out[(*key, name)] = np.concatenate([q[key] for q in parts] + [last[:, None]], axis=1)
    return out


def ratio_probs(model: ROIModel, xn: torch.Tensor, cls: np.ndarray, maps: torch.Tensor, ratios, gen: torch.Generator,
                chunk: int) -> dict:
    """{(kind, order): [P, len(ratios)]}: p of each pair's class with its map's top-r removed or kept alone,
    with the fill and with ROAD, at each of a few ratios."""
    rep = xn.repeat(len(ratios), 1, 1, 1)
    m = prefix_masks(maps, ratios).to(xn.dtype)
    gray = model.to_gray(rep)[:, None]
    crop, drop = model.crop_drop(rep, m)
    images = {("fill", "deletion"): drop, ("fill", "insertion"): crop,
              ("road", "deletion"): model.normalize(impute(gray, 1 - m, generator=gen)),
              ("road", "insertion"): model.normalize(impute(gray, m, generator=gen))}
    return {k: probs_of(model, v, cls, chunk).reshape(len(ratios), len(cls)).T for k, v in images.items()}


def area(start: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Per pair, the trapezoid area under p(r) over r in [0, 1], the curve starting at `start` at r = 0."""
    x = np.array((0.0,) + RATIOS)
    y = np.concatenate([start[:, None], grid], axis=1)
    return ((y[:, 1:] + y[:, :-1]) * np.diff(x) / 2).sum(1)


def curves_section(records: list[dict], counts: np.ndarray, maps: list[str], cap: int | None,
                   n_candidates: int) -> dict | None:
    """metrics.json's curves: per kind, order and map the mean curve (r = 0 first), its area and the area's
    95 % bootstrap interval over the test images; None with a cap of 0."""
    if cap == 0:
        return None
    rows = np.concatenate([r["rows"] for r in records]) if records else np.zeros(0, np.int64)
    cat = {k: np.concatenate([r[k] for r in records]) for k in records[0] if k != "rows"} if records else {}
    out = {"ratios": [0.0, *RATIOS], "n_images": int(len(np.unique(rows))), "n_pairs": int(len(rows)),
           "curve_images": cap, "images_with_pairs": n_candidates}
    for kind in KINDS:
        out[kind] = {}
        for name in maps:
            out[kind][name] = {}
            for order in ORDERS:
                if not records:
                    out[kind][name][order] = {"curve": None, "auc": None, "auc_ci95": None}
                    continue
                start = cat["full"] if order == "deletion" else cat["empty"]
                grid = cat[kind, order, name]
                ci = M.mean_ci(area(start, grid), rows, counts)
                out[kind][name][order] = {"curve": [float(start.mean()), *grid.mean(0).tolist()], "auc": ci["mean"],
                                          "auc_ci95": ci["ci95"]}
    return out
