"""Evaluation against ground truth: does the model rely on the region its map highlights?

Every explainer (explainers.py: the learned map, Grad-CAM and the random control, on the same model)
goes through the same passes over the test set:

- removal, per (image, finding) pair, at every keep ratio: the map's own top-r pixels kept (crop) or
  removed (drop), with the model's fill: comprehensiveness p_full - p_drop and sufficiency p_full - p_crop;
  and the same with ROAD's imputation (road.py) instead of the fill, which the classifier never saw:
  MoRF (the top r removed) and LeRF (only the top r kept);
- per image, at the model's ratio, the map of the most probable class (as `infer` applies the learned
  one): AUROC of crop and drop, the kept fraction, and leakage (can the labels be read off the mask?);
- localisation, per ground-truth box: pointing game and IoBB, per finding;
- examples for the report.

The true box itself, removed or kept alone, is the box control: if removing it does not lower p, no map
can be faithful and inside the box for that finding.

    roi-consistency evaluate --checkpoint ck.pt --csv nih_roi_test.csv --image-root images \
        --bbox BBox_List_2017.csv --out-dir eval
"""
from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from roi_consistency import metrics as M
from roi_consistency.atomic import write_json
from roi_consistency.cache import ImageCache
from roi_consistency.calibrate import calibration
from roi_consistency.checkpoint import load_trained
from roi_consistency.config import FILLS
from roi_consistency.curves import pair_curves, sample_rows
from roi_consistency.curves import summarize as curve_summary
from roi_consistency.data import ImageCSVDataset, good_rows
from roi_consistency.errors import UserError
from roi_consistency.explainers import Pairs, default_explainers
from roi_consistency.gallery import Gallery
from roi_consistency.labels import LabelError, canonical
from roi_consistency.model import ROIModel, topk_mask
from roi_consistency.road import impute
from roi_consistency.runtime import environment, pick_device
from roi_consistency.sanity import sanity_check

IOBB_T = ("0.1", "0.25", "0.5")
POOL = 16  # masks are average-pooled to 16x16 for the leakage check


@dataclass
class EvalOptions:
    keep_ratios: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)  # the checkpoint's ratio is always added
    road_ratios: tuple[float, ...] = (0.05, 0.1, 0.2)  # those also scored with ROAD (a cap: each costs a pass)
    curve_images: int | None = 200  # deletion/insertion curves on this many test images with a finding (None: all,
    # 0: none)
    sanity: bool = False  # the randomisation check (sanity.py), on sanity_images test images with a finding
    sanity_images: int = 64
    gallery: bool = True  # gallery.html, one card per (image, finding), thumbnails in gallery/
    gallery_limit: int | None = None  # ... of the first N test images only
    batch_size: int = 16
    device: str = "auto"
    n_examples: int = 8
    seed: int = 0  # of the random control and of the tie-breaking jitter
    workers: int = 2
    progress: bool = True
    cache: str | None = None
    skip_bad_images: bool = False  # leave out (and list) images the pre-flight check finds bad


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


def model_boxes(ds: ImageCSVDataset, bbox: str | None, classes: list[str], size: int) -> dict[str, list]:
    """{image: [(finding, x, y, w, h) in model-input pixels]} for the test images with boxes. Boxes are in
    each file's own pixels: its size comes from the cache's index where there is one, else the PNG header."""
    if not bbox:
        return {}
    wanted = set(ds.names)
    out = {}
    for name, bxs in read_boxes(bbox).items():
        bxs = [b for b in bxs if b[0] in classes]
        if name not in wanted or not bxs:
            continue
        src = ds.cache.source_size(name) if ds.cache is not None else None
        if src is None:
            with Image.open(ds.root / name) as im:
                src = im.size
        out[name] = [(b[0], *scale_box(b[1:], src, size)) for b in bxs]
    return out


class Tally:
    """What the passes collect over the test set, per explainer."""

    def __init__(self, n: int, classes: list[str], names: list[str], ratios: list[float], road_ratios: list[float]):
        c = len(classes)
        self.classes, self.ratios, self.road_ratios = classes, ratios, road_ratios
        self.p_full = np.zeros((n, c), np.float32)
        nan = lambda: np.full((n, c), np.nan, np.float32)  # noqa: E731
        self.crop = {k: {r: nan() for r in ratios} for k in names}
        self.drop = {k: {r: nan() for r in ratios} for k in names}
        self.road_lerf = {k: {r: nan() for r in road_ratios} for k in names}  # ROAD: only the region kept
        self.road_morf = {k: {r: nan() for r in road_ratios} for k in names}  # ROAD: the region removed
        self.crop_img, self.drop_img = {k: nan() for k in names}, {k: nan() for k in names}
        self.kept = {k: [] for k in names}
        self.pooled = {k: np.zeros((n, POOL * POOL), np.float32) for k in names}
        self.hits, self.iobb = {k: [] for k in names}, {k: [] for k in names}
        self.loc_class: list[str] = []  # the finding of each box, in the order of the hits
        self.loc_row: list[int] = []  # the test-set row of each box's image, in the same order
        self.box_pooled: dict[int, np.ndarray] = {}  # the union of an image's boxes: the leakage reference
        self.box_probs: list[tuple[str, float, float, float, float]] = []  # finding, p_full, p_drop, p_crop, area
        self.examples: list[dict] = []
        self.valid = np.zeros(n, bool)  # the rows scored (an image skipped mid-run is not)
        self.skipped: list[str] = []
        self.gallery = None  # a Gallery, fed each batch
        self.curve_rows = np.zeros(0, np.int64)  # the test-set rows the curves are drawn on (curves.sample_rows)
        self.n_curve_candidates = 0  # of how many rows with a pair they were drawn
        self.curves: list[dict] = []  # per batch: curves.pair_curves's output and the pairs' "rows"
        self.chunk = 64  # images per backbone call in the curves

    def drop_unscored(self) -> np.ndarray:
        """Keep only the rows that were scored (renumbered); returns their rows in the test set."""
        rows = np.flatnonzero(self.valid)
        if len(rows) < len(self.valid):
            new = {int(r): k for k, r in enumerate(rows)}
            self.p_full = self.p_full[rows]
            for d in (self.crop, self.drop, self.road_lerf, self.road_morf):
                for k in d:
                    d[k] = {r: v[rows] for r, v in d[k].items()}
            for d in (self.crop_img, self.drop_img, self.pooled):
                for k in d:
                    d[k] = d[k][rows]
            self.box_pooled = {new[r]: v for r, v in self.box_pooled.items()}
            self.loc_row = [new[r] for r in self.loc_row]
            for rec in self.curves:
                rec["rows"] = np.array([new[r] for r in rec["rows"]], np.int64)
        return rows


def removal(model: ROIModel, xn: torch.Tensor, m: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [P,C] with the region m kept alone (crop) and removed (drop), with the model's fill."""
    return tuple(v.cpu().numpy() for v in model.kept_and_removed(xn, m))


@torch.no_grad()
def road_removal(model: ROIModel, xn: torch.Tensor, m: torch.Tensor, gen: torch.Generator):
    """Probabilities [P,C] with the region m kept alone (LeRF) and removed (MoRF), the other pixels filled
    by ROAD's noisy linear imputation instead of the model's fill."""
    gray = model.to_gray(xn)[:, None]
    both = torch.cat([impute(gray, m, generator=gen), impute(gray, 1 - m, generator=gen)])
    out = torch.sigmoid(model.backbone(model.normalize(both)).float()).cpu().numpy()
    return out[: len(xn)], out[len(xn):]


def ranked(maps: torch.Tensor, ties: bool, gen: torch.Generator) -> torch.Tensor:
    """The map top-r is taken from: with a tiny seeded jitter where the explainer's maps have plateaus."""
    return maps + 1e-6 * torch.rand(maps.shape, generator=gen).to(maps.device) if ties else maps


@dataclass
class Entries:
    """What one batch explains, one map per distinct (image, class): every (image, true finding) and
    (image, boxed finding) pair, for the pair figures, and each image's most probable class, for the
    image figures (the map `infer` applies). Most images' most probable class is one of their findings,
    so the two share their maps and their removal at the model's ratio."""
    pairs: Pairs  # all entries
    b: np.ndarray  # each entry's row in the batch
    scored: np.ndarray  # the entries that are pairs
    top: np.ndarray  # per image of the batch, the entry of its most probable class

    def subset(self, at: np.ndarray) -> Pairs:
        i = torch.from_numpy(at).to(self.pairs.xn.device)
        return Pairs(self.pairs.xn[i], self.pairs.cls[i], [self.pairs.boxes[k] for k in at.tolist()])


def batch_entries(t: Tally, y: np.ndarray, names: list[str], boxes: dict, xn: torch.Tensor, p: np.ndarray) -> Entries:
    classes = t.classes
    found = {(b, int(c)) for b in range(len(names)) for c in np.flatnonzero(y[b] > 0.5)}
    found |= {(b, classes.index(bx[0])) for b, nm in enumerate(names) for bx in boxes.get(nm, ())}
    top = [(b, int(c)) for b, c in enumerate(p.argmax(1))]
    entries = sorted(found | set(top))
    at = {e: k for k, e in enumerate(entries)}
    pb = torch.tensor([b for b, _ in entries], dtype=torch.long, device=xn.device)
    pc = torch.tensor([c for _, c in entries], dtype=torch.long, device=xn.device)
    pboxes = [[tuple(bx[1:]) for bx in boxes.get(names[b], ()) if bx[0] == classes[c]] for b, c in entries]
    return Entries(Pairs(xn[pb], pc, pboxes), pb.cpu().numpy(), np.flatnonzero([e in found for e in entries]),
                   np.array([at[e] for e in top]))


def image_pass(t: Tally, ent: Entries, rows: np.ndarray, masks: dict, removed: dict) -> None:
    """Each explainer's map of each image's most probable class, at the model's ratio: from the entries'
    top-r masks and their removal (crop, drop) there."""
    for name, m in masks.items():
        m = m[torch.from_numpy(ent.top).to(m.device)]
        t.crop_img[name][rows], t.drop_img[name][rows] = (v[ent.top] for v in removed[name])
        t.kept[name].append(m.mean(dim=(1, 2, 3)).cpu().numpy())
        t.pooled[name][rows] = F.adaptive_avg_pool2d(m, POOL).flatten(1).cpu().numpy()


def pair_pass(t: Tally, model: ROIModel, pairs: Pairs, rows: np.ndarray, maps: dict, at_r0: dict, r0: float,
              road_gen: torch.Generator) -> None:
    """Removal at every ratio for each pair, with the fill and with ROAD, scored on the pair's own class;
    at_r0: each map's removal at the model's ratio, already done for these pairs."""
    cls = pairs.cls.cpu().numpy()
    at = np.arange(len(cls))
    for name, mp in maps.items():
        for r in t.ratios:
            m = topk_mask(mp, r)
            c_, d_ = at_r0[name] if r == r0 else removal(model, pairs.xn, m)
            t.crop[name][r][rows, cls], t.drop[name][r][rows, cls] = c_[at, cls], d_[at, cls]
            if r not in t.road_ratios:
                continue
            c_, d_ = road_removal(model, pairs.xn, m, road_gen)
            t.road_lerf[name][r][rows, cls], t.road_morf[name][r][rows, cls] = c_[at, cls], d_[at, cls]


def curve_pass(t: Tally, model: ROIModel, pairs: Pairs, rows: np.ndarray, maps: dict, gen: torch.Generator) -> None:
    """Deletion and insertion curves of the batch's pairs whose image is among the sampled rows."""
    sel = np.isin(rows, t.curve_rows)
    if not sel.any():
        return
    at = torch.from_numpy(np.flatnonzero(sel)).to(pairs.xn.device)
    rec = pair_curves(model, pairs.xn[at], pairs.cls.cpu().numpy()[sel], {k: v[at] for k, v in maps.items()}, gen,
                      t.chunk)
    t.curves.append({**rec, "rows": rows[sel]})


def localisation_pass(t: Tally, model: ROIModel, pairs: Pairs, rows: np.ndarray, raw: dict, maps: dict,
                      r0: float) -> None:
    """Pointing (on the raw map: a plateau points at its centroid) and IoBB of each map, per box; and the
    box control: each box itself removed or kept alone."""
    size = pairs.xn.shape[-1]
    items = [(k, box) for k, bxs in enumerate(pairs.boxes) for box in bxs]
    if not items:
        return
    for name in maps:
        region = topk_mask(maps[name], r0)[:, 0].cpu().numpy()
        heat = raw[name][:, 0].float().cpu().numpy()
        for k, box in items:
            t.hits[name].append(M.pointing_hit(heat[k], box))
            t.iobb[name].append(M.iobb(region[k], box))
    cls = pairs.cls.cpu().numpy()
    bm = np.stack([M.box_mask((size, size), box) for _, box in items])
    for (k, _), m_ in zip(items, bm):
        t.loc_class.append(t.classes[cls[k]])
        t.loc_row.append(int(rows[k]))
        union = t.box_pooled.setdefault(int(rows[k]), np.zeros((size, size), bool))
        union |= m_
    ks = np.array([k for k, _ in items])
    c_, d_ = removal(model, pairs.xn[ks], torch.from_numpy(bm).float()[:, None].to(pairs.xn.device))
    for j, (k, m_) in enumerate(zip(ks, bm)):
        c = cls[k]
        t.box_probs.append((t.classes[c], float(t.p_full[rows[k], c]), float(d_[j, c]), float(c_[j, c]),
                            float(m_.mean())))


def evaluate_batch(t: Tally, model: ROIModel, explainers, x: torch.Tensor, idx: np.ndarray, y: np.ndarray,
                   names: list[str], boxes: dict, r0: float, n_examples: int, gens: dict) -> None:
    """All passes on one batch; gens: the seeded generators of the tie-breaking jitter and of ROAD's noise."""
    xn = model.normalize(x)
    with torch.no_grad():
        t.p_full[idx] = torch.sigmoid(model.backbone(xn).float()).cpu().numpy()
    ent = batch_entries(t, y, names, boxes, xn, t.p_full[idx])
    raw = {e.name: e(ent.pairs) for e in explainers}
    maps = {e.name: ranked(raw[e.name], e.ties, gens["jitter"]) for e in explainers}
    masks = {k: topk_mask(v, r0) for k, v in maps.items()}
    removed = {k: removal(model, ent.pairs.xn, m) for k, m in masks.items()}
    image_pass(t, ent, idx, masks, removed)
    if t.gallery is not None:
        feed_gallery(t.gallery, model, xn, ent, raw, removed, names, y, t.p_full[idx], boxes)
    if not len(ent.scored):
        return
    pairs, pb, si = ent.subset(ent.scored), ent.b[ent.scored], torch.from_numpy(ent.scored).to(xn.device)
    raw, maps = ({k: v[si] for k, v in d.items()} for d in (raw, maps))
    at_r0 = {k: (c[ent.scored], d[ent.scored]) for k, (c, d) in removed.items()}
    pair_pass(t, model, pairs, idx[pb], maps, at_r0, r0, gens["road"])
    curve_pass(t, model, pairs, idx[pb], maps, gens["curve"])
    localisation_pass(t, model, pairs, idx[pb], raw, maps, r0)
    for k in first_pair_per_image(pb, pairs, bool(boxes)):
        if len(t.examples) >= n_examples:
            break
        b = int(pb[k])
        t.examples.append(example(model, xn[b], names[b], t.classes, y[b], boxes.get(names[b], []),
                                  {name: (raw[name][k, 0], maps[name][k, 0]) for name in maps}, r0))


def feed_gallery(gallery: Gallery, model: ROIModel, xn: torch.Tensor, ent: Entries, raw: dict, removed: dict,
                 names: list[str], y: np.ndarray, p: np.ndarray, boxes: dict) -> None:
    """The batch's gallery cards, from the entries' maps and, where its first map has no tie-breaking
    jitter (so that its top-r is the passes'), their removal at the model's ratio."""
    keys = list(zip(ent.b.tolist(), ent.pairs.cls.tolist()))
    drawn = {key: {n: m[k, 0] for n, m in raw.items()} for k, key in enumerate(keys)}
    first = None if gallery.explainers[0].ties else removed.get(gallery.explainers[0].name)
    kept = {key: (first[0][k], first[1][k]) for k, key in enumerate(keys)} if first else {}
    gallery.add(model, xn, names, y, p, boxes, drawn, kept)


def first_pair_per_image(pb: np.ndarray, pairs: Pairs, with_boxes: bool) -> list[int]:
    """The pair each example image shows: its first boxed finding (with a box file), else its first finding."""
    out, seen = [], set()
    for k, b in enumerate(pb.tolist()):
        if b not in seen and (pairs.boxes[k] or not with_boxes):
            seen.add(b)
            out.append(k)
    return out


def example(model: ROIModel, xn: torch.Tensor, name: str, classes: list[str], yrow: np.ndarray, boxes: list,
            maps: dict, r: float) -> dict:
    """One row of the report's example grid: the image, its boxes, each map's heat and top-r region, and
    the probabilities of the true findings with the first explainer's (the learned map's) region kept or
    removed."""
    ex_maps = {}
    for key, (heat, rank) in maps.items():
        h = heat.float().cpu().numpy()  # shown without the tie-breaking jitter, which is only for top-r
        ex_maps[key] = {"heat": (h - h.min()) / max(float(h.max() - h.min()), 1e-12),
                        "mask": topk_mask(rank[None, None].float(), r)[0, 0].cpu().numpy() > 0.5}
    labels = [c for c, v in zip(classes, yrow) if v > 0.5]
    m = topk_mask(next(iter(maps.values()))[1][None, None].float(), r)
    with torch.no_grad():
        out = torch.sigmoid(model.backbone(torch.cat([xn[None], *model.crop_drop(xn[None], m)])).float())
    probs = {k: {c: float(out[j, classes.index(c)]) for c in labels} for j, k in enumerate(("full", "crop", "drop"))}
    return {"image": name, "labels": labels, "gray": model.to_gray(xn).cpu().numpy(), "boxes": boxes,
            "maps": ex_maps, "probs": probs}


def evaluate_model(model: ROIModel, ds: ImageCSVDataset, boxes: dict, explainers, ratios: list[float], r0: float,
                   opt: EvalOptions, device: torch.device, gallery: Gallery | None = None) -> Tally:
    """Every pass over the test set, batch by batch (and the gallery's cards, when given one)."""
    road = sorted(set(float(r) for r in opt.road_ratios) | {r0})
    t = Tally(len(ds), ds.classes, [e.name for e in explainers], sorted(set(ratios) | set(road)), road)
    t.gallery = gallery
    t.curve_rows, t.n_curve_candidates = sample_rows(ds.labels, ds.names, boxes, opt.curve_images, opt.seed)
    t.chunk = 4 * opt.batch_size
    gens = {"jitter": torch.Generator().manual_seed(opt.seed + 2), "road": torch.Generator().manual_seed(opt.seed + 3),
            "curve": torch.Generator().manual_seed(opt.seed + 4)}
    loader = DataLoader(ds, batch_size=opt.batch_size, num_workers=opt.workers, pin_memory=device.type == "cuda")
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not opt.progress):
        x, _, idx = good_rows(batch, ds.names, t.skipped)
        if not len(idx):
            continue
        idx = idx.numpy()
        t.valid[idx] = True
        evaluate_batch(t, model, explainers, x.to(device), idx, ds.labels[idx], [ds.names[i] for i in idx],
                       boxes, r0, opt.n_examples, gens)
    return t


def faithfulness(t: Tally, y: np.ndarray) -> dict:
    return {k: {"comprehensiveness": {str(r): M.comprehensiveness(t.p_full, t.drop[k][r], y) for r in t.ratios},
                "sufficiency": {str(r): M.sufficiency(t.p_full, t.crop[k][r], y) for r in t.ratios}}
            for k in t.crop}


def road(t: Tally, y: np.ndarray) -> dict:
    """ROAD's figures, defined as comprehensiveness (MoRF) and sufficiency (LeRF) are, per ratio."""
    return {k: {"morf": {str(r): M.comprehensiveness(t.p_full, t.road_morf[k][r], y) for r in t.road_ratios},
                "lerf": {str(r): M.sufficiency(t.p_full, t.road_lerf[k][r], y) for r in t.road_ratios}}
            for k in t.road_morf}


def localization(t: Tally) -> dict:
    by_class = sorted(set(t.loc_class), key=t.classes.index)
    out = {"n_boxes": len(t.loc_class)}
    for k in t.hits:
        hits, iobb = np.array(t.hits[k], bool), np.array(t.iobb[k])
        out[k] = {"pointing_game": float(hits.mean()) if len(hits) else None,
                  "pointing_by_class": {c: float(hits[[lc == c for lc in t.loc_class]].mean()) for c in by_class},
                  "iobb_acc": {th: float(np.mean(iobb > float(th))) if len(iobb) else None for th in IOBB_T}}
    return out


SIZES = ("small", "medium", "large")


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
    """metrics.json: every figure, per explainer."""
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
            "localization": localization(t) if with_boxes else None,
            "box_control": box_control(t) if with_boxes else None,
            "localization_by_size": by_lesion_size(t) if with_boxes else None,
            "leakage": leak, "leakage_boxed": leak_boxed, "uncertainty": uncertainty(t, y, r0, counts, seed),
            "curves": curve_summary(t.curves, counts, list(t.crop), curve_images, int(t.n_curve_candidates)),
            "calibration": calibration(y, t.p_full, classes, thresholds, counts, csv_path)}


def sanity_pairs(ds: ImageCSVDataset, rows: np.ndarray, boxes: dict, model: ROIModel, device) -> Pairs | None:
    """One (image, finding) pair per image of `rows`: its first true finding, else its first boxed one
    (None when there is none to draw: no finding in the test set, or every such image bad)."""
    xs, cls = [], []
    for i in rows.tolist():
        x, y, idx = ds[i]
        if idx < 0:  # bad, skipped
            continue
        found = np.flatnonzero(y.numpy() > 0.5)
        cls.append(int(found[0]) if len(found) else ds.classes.index(boxes[ds.names[i]][0][0]))
        xs.append(x)
    if not xs:
        return None
    return Pairs(model.normalize(torch.stack(xs).to(device)), torch.tensor(cls, device=device), [[] for _ in cls])


def evaluate_checkpoint(checkpoint: str, csv_path: str, image_root: str, bbox: str | None = None,
                        out_dir: str = "eval", **options) -> dict:
    """Score a checkpoint on a test CSV with every explainer; write metrics.json and report.html into
    out_dir and return the metrics. options: the fields of EvalOptions."""
    opt = EvalOptions(**options)
    dev = pick_device(opt.device)
    model, cfg = load_trained(checkpoint, dev)
    classes, size, r0 = cfg.data.classes, cfg.model.img_size, cfg.method.keep_ratio
    ds = ImageCSVDataset(csv_path, image_root, size, classes, cache=ImageCache(opt.cache, size) if opt.cache else None)
    if not ds.has_labels:
        raise UserError(f"{csv_path}: evaluation needs a labels column")
    skipped = ds.drop_bad(opt.skip_bad_images, opt.progress)
    boxes = model_boxes(ds, bbox, classes, size)
    ratios = sorted(set(float(r) for r in opt.keep_ratios) | {r0})
    out = Path(out_dir)
    gallery = Gallery(out / "gallery.html", classes, model.thresholds, r0, default_explainers(model, cfg, opt.seed),
                      opt.gallery_limit) if opt.gallery else None
    t = evaluate_model(model, ds, boxes, default_explainers(model, cfg, opt.seed), ratios, r0, opt, dev, gallery)
    sanity = None
    if opt.sanity:
        pairs = sanity_pairs(ds, sample_rows(ds.labels, ds.names, boxes, opt.sanity_images, opt.seed + 5)[0], boxes,
                             model, dev)
        sanity = sanity_check(model, cfg.method.mode, pairs, seed=opt.seed, chunk=opt.batch_size) if pairs else None
    rows = t.drop_unscored()
    y = ds.labels[rows]
    result = {**summarize(t, y, cfg, checkpoint, bbox is not None, opt.seed, model.thresholds, csv_path,
                          opt.curve_images),
              "sanity": sanity, "skipped_images": sorted(skipped + t.skipped), "gallery": None,
              "environment": {"trained": model.trained_on, "evaluated": environment(dev)}}
    if gallery is not None:
        result["gallery"] = {"page": "gallery.html", **gallery.finish()}
    write_json(out / "metrics.json", result)
    from roi_consistency.report import write_report
    write_report(out / "report.html", result, M.roc_curves(y, t.p_full, classes, result["auroc"]["full"]), t.examples)
    return result
