"""The confounder audit (`evaluate --confounders FILE`): does the model rely on a region that should not be
evidence, and does each map say so?

FILE is in the NIH box format (`Image Index,Finding Label,x,y,w,h`, the image's own pixels). Each row
names a test image, a finding, and a region that should not be evidence for it: a marker, a tube, a text
token. The finding need not be true for the image: a false positive a marker causes is the case that
matters most. For every listed pair:

- the model's reliance on the region: p(full) minus p with the region removed, once with the model's fill
  and once with ROAD's imputation (the removal the classifier never saw); and, with the fill, the drop in
  log-odds, which shows a region that carries the logit of a film whose p is already small;
- for each map, drawn for the pair's finding: `pointing`, the map's maximum lies in the region, strictly
  and within the pointing game's tolerance (15 px at 224 px, scaled: a coarse map's peak can sit just
  outside a small marker); `share`, the share of the region's pixels inside the map's mask at the
  model's keep ratio (Sun et al. 2023's confounder sensitivity); `energy`, the share of the map's
  positive mass inside the region; `placebo_share`, the share of the region mirrored left to right inside
  the mask: a map that lights the region itself, not that part of every film (a corner, an apex), covers
  the region more than its mirror image.

Each is reported on all pairs, on those where the model relies on the region (the fill's drop above
RELIES) and on those where it does not (below IGNORES): where the model relies on the region a map that
shows reliance lights up, and where it ignores it the map stays dark.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from roi_consistency.data.boxes import read_boxes, to_model_pixels
from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.data.vocabulary import class_of
from roi_consistency.errors import UserError
from roi_consistency.evaluation import metrics as M
from roi_consistency.evaluation.explainers import Pairs
from roi_consistency.evaluation.passes import jittered, road_crop_drop
from roi_consistency.evaluation.schema import CONFOUNDER_MEASURES as MEASURES
from roi_consistency.model.masks import topk_mask
from roi_consistency.model.network import ROIModel

RELIES, IGNORES = 0.1, 0.02  # the fill's drop above which the model relies on a region, below which it ignores it
TOLERANCE = 15 / 224  # the pointing game's tolerance (Zhang et al. 2016), as a share of the image side


@dataclass
class Listed:
    """The audited pairs: each one's test-set row, finding (class index) and region (model-input pixels)."""
    rows: np.ndarray
    cls: np.ndarray
    boxes: list[tuple[float, float, float, float]]

    def __len__(self) -> int:
        return len(self.rows)


def read_confounders(path: str, ds: ImageCSVDataset, classes: list[str], size: int) -> tuple[Listed, list[str]]:
    """The pairs FILE lists for this test set, and the images it lists that the test set lacks (left out). A
    finding the model does not score is an error naming it."""
    listed = {n: [(class_of(b[0], classes) or b[0], *b[1:]) for b in bxs] for n, bxs in read_boxes(path).items()}
    unknown = sorted({b[0] for bxs in listed.values() for b in bxs} - set(classes))
    if unknown:
        raise UserError(f"--confounders {path}: findings this model does not score: {', '.join(unknown)}; it "
                        f"scores {', '.join(classes)}")
    row = {n: i for i, n in enumerate(ds.names)}
    missing = sorted(n for n in listed if n not in row)
    scaled = to_model_pixels(ds, {n: b for n, b in listed.items() if n in row}, size, f"--confounders {path}")
    items = [(row[n], classes.index(b[0]), tuple(b[1:])) for n, bxs in scaled.items() for b in bxs]
    if not items:
        raise UserError(f"--confounders {path}: none of its images is in the test CSV")
    rows, cls, boxes = zip(*items)
    return Listed(np.array(rows), np.array(cls), list(boxes)), missing


def peak_distance(map_: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Pixels from the map's maximum to the box (0 inside it); tied maxima count as their centroid, as in
    the pointing game."""
    cx, cy = M.peak(map_)
    x0, y0, w, h = box
    return float(np.hypot(max(x0 - cx, 0.0, cx - x0 - w), max(y0 - cy, 0.0, cy - y0 - h)))


def mirrored(box: tuple[float, float, float, float], width: int) -> tuple[float, float, float, float]:
    """The box mirrored left to right in an image `width` pixels wide."""
    x0, y0, w, h = box
    return (width - x0 - w, y0, w, h)


def covered(mask: np.ndarray, region: np.ndarray) -> float:
    return float((mask & region).sum() / max(int(region.sum()), 1))


def region_measures(map_: np.ndarray, mask: np.ndarray, region: np.ndarray, box, tolerance: float,
                    placebo: np.ndarray) -> dict:
    """One map's pointing (strict and tolerant), share and energy for one region, and its share of the
    `placebo` region (the region mirrored)."""
    dist = peak_distance(map_, box)
    positive = np.clip(map_, 0, None)
    mass = float(positive.sum())
    return {"pointing": float(dist == 0), "pointing_tolerant": float(dist <= tolerance),
            "share": covered(mask, region), "energy": float(positive[region].sum() / mass) if mass > 0 else 0.0,
            "placebo_share": covered(mask, placebo)}


def audit_chunk(model: ROIModel, explainers, xn: torch.Tensor, cls: np.ndarray, boxes: list, r0: float,
                gens: dict) -> dict:
    """Reliance and every map's measures for a chunk of listed pairs: {"p_full", "p_fill", "p_road": [P],
    map name: {measure: [P]}, "maps": {name: [P,H,W]}}."""
    size = xn.shape[-1]
    region = np.stack([M.box_mask((size, size), b) for b in boxes])
    placebo = np.stack([M.box_mask((size, size), mirrored(b, size)) for b in boxes])
    at = np.arange(len(cls))
    m = torch.from_numpy(region).float()[:, None].to(xn.device)
    with torch.no_grad():
        full = torch.sigmoid(model.backbone(xn).float()).cpu().numpy()[at, cls]
    fill = model.crop_drop_probs(xn, m)[1].cpu().numpy()[at, cls]
    road = road_crop_drop(model, xn, m, gens["road"])[1][at, cls]
    out = {"p_full": full, "p_fill": fill, "p_road": road, "maps": {}}
    pairs = Pairs(xn, torch.from_numpy(cls).to(xn.device), [[b] for b in boxes])
    for e in explainers:
        maps = e(pairs).detach()
        masks = topk_mask(jittered(maps, e.ties, gens["jitter"]), r0)[:, 0].bool().cpu().numpy()
        maps = maps[:, 0].float().cpu().numpy()
        rows = [region_measures(maps[k], masks[k], region[k], boxes[k], TOLERANCE * size, placebo[k]) for k in at]
        out[e.name] = {k: np.array([r[k] for r in rows]) for k in MEASURES}
        out["maps"][e.name] = maps
    return out


@dataclass
class Audit:
    """What the audit collects over the listed pairs: per pair p on the full image and without the region
    (fill, ROAD), each map's measures, the test-set row; and a few examples for the report."""
    p_full: np.ndarray
    p_fill: np.ndarray
    p_road: np.ndarray
    measures: dict  # {map name: {measure: [P]}}
    rows: np.ndarray
    examples: list


def pick_examples(listed: Listed, at: np.ndarray, out: dict, xn: torch.Tensor, model: ROIModel, classes: list[str],
                  names: list[str], r0: float, room: int) -> list[dict]:
    """Up to `room` report examples of a chunk, pairs the model relies on first."""
    drop = out["p_full"] - out["p_fill"]
    order = [k for k in np.argsort(-drop) if drop[k] > RELIES or drop[k] < IGNORES][:room]
    examples = []
    for k in order:
        maps = {n: m[k] for n, m in out["maps"].items()}
        examples.append({"image": names[listed.rows[at[k]]], "finding": classes[listed.cls[at[k]]],
                         "gray": model.to_gray(xn[k]).cpu().numpy(), "boxes": [("region", *listed.boxes[at[k]])],
                         "maps": {n: {"map": (m - m.min()) / max(float(m.max() - m.min()), 1e-12),
                                      "mask": topk_mask(torch.from_numpy(m)[None, None], r0)[0, 0].numpy() > 0.5}
                                  for n, m in maps.items()},
                         "p": {"full": float(out["p_full"][k]), "fill": float(out["p_fill"][k]),
                               "road": float(out["p_road"][k])}})
    return examples


def audit(model: ROIModel, ds: ImageCSVDataset, listed: Listed, explainers, r0: float, batch_size: int, seed: int,
          n_examples: int = 4) -> Audit:
    """Every listed pair, `batch_size` at a time (a bad image's pairs are left out)."""
    gens = {"jitter": torch.Generator().manual_seed(seed + 6), "road": torch.Generator().manual_seed(seed + 7)}
    device = model.mean.device
    parts, kept, examples = [], [], []
    for s in range(0, len(listed), batch_size):
        items = [(k, ds[int(listed.rows[k])]) for k in range(s, min(s + batch_size, len(listed)))]
        items = [(k, x) for k, (x, _, idx) in items if idx >= 0]
        if not items:
            continue
        at = np.array([k for k, _ in items])
        xn = model.normalize(torch.stack([x for _, x in items]).to(device))
        out = audit_chunk(model, explainers, xn, listed.cls[at], [listed.boxes[k] for k in at], r0, gens)
        examples += pick_examples(listed, at, out, xn, model, ds.classes, ds.names, r0, n_examples - len(examples))
        parts.append(out)
        kept.append(at)
    if not parts:
        raise UserError("--confounders: every image it lists is bad (see the warnings above)")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("p_full", "p_fill", "p_road")}
    measures = {e.name: {m: np.concatenate([p[e.name][m] for p in parts]) for m in MEASURES} for e in explainers}
    return Audit(cat["p_full"], cat["p_fill"], cat["p_road"], measures, listed.rows[np.concatenate(kept)], examples)


def reliance(drop: np.ndarray, image_of: np.ndarray, counts: np.ndarray, above: float | None = RELIES) -> dict:
    """The mean drop without the region, its interval, and the share of pairs that drop more than `above`."""
    share = float((drop > above).mean()) if len(drop) and above is not None else None
    return {**M.mean_ci(drop, image_of, counts), "share_above": share}


def log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)  # float32's sigmoid saturates about there
    return np.log(p) - np.log1p(-p)


def confounders_section(a: Audit, path: str, left_out: list[str], seed: int) -> dict:
    """metrics.json's confounders: per set of pairs (all, relied, ignored), the reliance with the fill and
    with ROAD, and each map's measures, each with its 95 % bootstrap interval over the listed images."""
    images, image_of = np.unique(a.rows, return_inverse=True)
    counts = M.resample_counts(len(images), seed=seed)
    drops = {"fill": a.p_full - a.p_fill, "road": a.p_full - a.p_road}
    chosen = {"all": np.ones(len(a.rows), bool), "relied": drops["fill"] > RELIES, "ignored": drops["fill"] < IGNORES}
    # where p is already small, a drop below IGNORES can still be the region carrying most of the logit: the
    # drop in log-odds shows it (no threshold of its own: the sets stay those of p)
    drops["log_odds"] = log_odds(a.p_full) - log_odds(a.p_fill)
    sets = {}
    for name, sel in chosen.items():
        sets[name] = {"n_pairs": int(sel.sum()),
                      "reliance": {k: reliance(d[sel], image_of[sel], counts, None if k == "log_odds" else RELIES)
                                   for k, d in drops.items()},
                      "maps": {e: {m: M.mean_ci(v[sel], image_of[sel], counts) for m, v in per.items()}
                               for e, per in a.measures.items()}}
    return {"file": str(path), "n_pairs": int(len(a.rows)), "n_images": int(len(images)),
            "left_out_images": left_out, "relies_above": RELIES, "ignores_below": IGNORES,
            "tolerance": TOLERANCE, "maps": list(a.measures), "sets": sets}
