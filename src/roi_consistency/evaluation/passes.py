"""The passes of an evaluation over the test set, batch by batch: every explainer (explainers.py: the
learned map, Grad-CAM and the random control, on the same model) goes through the same ones.

- crop and drop, per (image, finding) pair, at every keep ratio: the map's own top-r pixels kept alone
  (crop) or removed (drop), with the model's fill; and the same with ROAD's imputation (road.py) instead
  of the fill, which the classifier never saw (ROAD's LeRF: the crop; MoRF: the drop);
- per image, at the model's ratio, the map of the most probable class (as `infer` applies the learned
  one): its crop and drop probabilities, the kept fraction, and the mask pooled for the leakage check;
- deletion and insertion curves (curves.py) on a sample of the pairs;
- localisation, per ground-truth box: pointing game and IoBB, and the box control (the true box itself as
  the region);
- examples for the report, and the gallery's cards.

What they collect goes into a `Tally`; summary.py turns it into metrics.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from roi_consistency.data.dataset import ImageCSVDataset, good_rows
from roi_consistency.evaluation import metrics as M
from roi_consistency.evaluation.curves import pair_curves, sample_rows
from roi_consistency.evaluation.explainers import Pairs
from roi_consistency.evaluation.road import impute
from roi_consistency.evaluation.schema import DEFAULT_MAPS
from roi_consistency.model.masks import topk_mask
from roi_consistency.model.network import ROIModel

if TYPE_CHECKING:  # the gallery is fed here, but it is an output: no import at run time
    from roi_consistency.outputs.gallery import Gallery

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
    confounders: str | None = None  # a box file of regions that should not be evidence: the confounder audit
    masks: str | None = None  # a folder of ground-truth masks, FOLDER/<finding>/<image stem>.png
    maps: tuple[str, ...] = DEFAULT_MAPS  # the explainers scored (explainers.EXPLAINERS), the learned map first


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
        self.mask_scores = {k: [] for k in names}  # per ground-truth mask: (pointing, share, IoU) at the model's r
        self.mask_class: list[str] = []  # the finding of each mask, in the same order
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


def crop_drop(model: ROIModel, xn: torch.Tensor, m: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [P,C] on the crop and on the drop of the region m, with the model's fill."""
    return tuple(v.cpu().numpy() for v in model.crop_drop_probs(xn, m))


@torch.no_grad()
def road_crop_drop(model: ROIModel, xn: torch.Tensor, m: torch.Tensor, gen: torch.Generator):
    """Probabilities [P,C] on the crop (LeRF) and the drop (MoRF) of the region m, the removed pixels filled
    by ROAD's noisy linear imputation instead of the model's fill."""
    gray = model.to_gray(xn)[:, None]
    both = torch.cat([impute(gray, m, generator=gen), impute(gray, 1 - m, generator=gen)])
    out = torch.sigmoid(model.backbone(model.normalize(both)).float()).cpu().numpy()
    return out[: len(xn)], out[len(xn):]


def jittered(maps: torch.Tensor, ties: bool, gen: torch.Generator) -> torch.Tensor:
    """The map top-r is taken from: with a tiny seeded jitter where the explainer's maps have plateaus."""
    return maps + 1e-6 * torch.rand(maps.shape, generator=gen).to(maps.device) if ties else maps


@dataclass
class Entries:
    """What one batch explains, one map per distinct (image, class): every (image, true finding) and
    (image, boxed finding) pair, for the pair figures, and each image's most probable class, for the
    image figures (the map `infer` applies). Most images' most probable class is one of their findings,
    so the two share their maps and their crop and drop at the model's ratio."""
    pairs: Pairs  # all entries
    b: np.ndarray  # each entry's row in the batch
    scored: np.ndarray  # the entries that are pairs
    top: np.ndarray  # per image of the batch, the entry of its most probable class

    def subset(self, at: np.ndarray) -> Pairs:
        i = torch.from_numpy(at).to(self.pairs.xn.device)
        return Pairs(self.pairs.xn[i], self.pairs.cls[i], [self.pairs.boxes[k] for k in at.tolist()])


def batch_entries(t: Tally, y: np.ndarray, names: list[str], boxes: dict, xn: torch.Tensor, p: np.ndarray,
                  truth: dict | None = None) -> Entries:
    classes = t.classes
    found = {(b, int(c)) for b in range(len(names)) for c in np.flatnonzero(y[b] > 0.5)}
    found |= {(b, classes.index(bx[0])) for b, nm in enumerate(names) for bx in boxes.get(nm, ())}
    found |= {(b, classes.index(f)) for b, nm in enumerate(names) for f, _ in (truth or {}).get(nm, ())}
    top = [(b, int(c)) for b, c in enumerate(p.argmax(1))]
    entries = sorted(found | set(top))
    at = {e: k for k, e in enumerate(entries)}
    pb = torch.tensor([b for b, _ in entries], dtype=torch.long, device=xn.device)
    pc = torch.tensor([c for _, c in entries], dtype=torch.long, device=xn.device)
    pboxes = [[tuple(bx[1:]) for bx in boxes.get(names[b], ()) if bx[0] == classes[c]] for b, c in entries]
    return Entries(Pairs(xn[pb], pc, pboxes), pb.cpu().numpy(), np.flatnonzero([e in found for e in entries]),
                   np.array([at[e] for e in top]))


def image_pass(t: Tally, ent: Entries, rows: np.ndarray, masks: dict, at_r0: dict) -> None:
    """Each explainer's map of each image's most probable class, at the model's ratio: from the entries'
    top-r masks and their crop and drop probabilities there (at_r0)."""
    for name, m in masks.items():
        m = m[torch.from_numpy(ent.top).to(m.device)]
        t.crop_img[name][rows], t.drop_img[name][rows] = (v[ent.top] for v in at_r0[name])
        t.kept[name].append(m.mean(dim=(1, 2, 3)).cpu().numpy())
        t.pooled[name][rows] = F.adaptive_avg_pool2d(m, POOL).flatten(1).cpu().numpy()


def pair_pass(t: Tally, model: ROIModel, pairs: Pairs, rows: np.ndarray, ranked: dict, at_r0: dict, r0: float,
              road_gen: torch.Generator) -> None:
    """Crop and drop at every ratio for each pair, with the fill and with ROAD, scored on the pair's own
    class; at_r0: each map's crop and drop probabilities at the model's ratio, already drawn for these pairs."""
    cls = pairs.cls.cpu().numpy()
    at = np.arange(len(cls))
    for name, mp in ranked.items():
        for r in t.ratios:
            m = topk_mask(mp, r)
            c_, d_ = at_r0[name] if r == r0 else crop_drop(model, pairs.xn, m)
            t.crop[name][r][rows, cls], t.drop[name][r][rows, cls] = c_[at, cls], d_[at, cls]
            if r not in t.road_ratios:
                continue
            c_, d_ = road_crop_drop(model, pairs.xn, m, road_gen)
            t.road_lerf[name][r][rows, cls], t.road_morf[name][r][rows, cls] = c_[at, cls], d_[at, cls]


def curve_pass(t: Tally, model: ROIModel, pairs: Pairs, rows: np.ndarray, ranked: dict, gen: torch.Generator) -> None:
    """Deletion and insertion curves of the batch's pairs whose image is among the sampled rows."""
    sel = np.isin(rows, t.curve_rows)
    if not sel.any():
        return
    at = torch.from_numpy(np.flatnonzero(sel)).to(pairs.xn.device)
    rec = pair_curves(model, pairs.xn[at], pairs.cls.cpu().numpy()[sel], {k: v[at] for k, v in ranked.items()}, gen,
                      t.chunk)
    t.curves.append({**rec, "rows": rows[sel]})


def localisation_pass(t: Tally, model: ROIModel, pairs: Pairs, rows: np.ndarray, maps: dict, ranked: dict,
                      r0: float) -> None:
    """Pointing (on the map itself: a plateau points at its centroid) and IoBB of each map, per box; and the
    box control: the crop and the drop of each box itself."""
    size = pairs.xn.shape[-1]
    items = [(k, box) for k, bxs in enumerate(pairs.boxes) for box in bxs]
    if not items:
        return
    for name in ranked:
        region = topk_mask(ranked[name], r0)[:, 0].cpu().numpy()
        m_ = maps[name][:, 0].float().cpu().numpy()
        for k, box in items:
            t.hits[name].append(M.pointing_hit(m_[k], box))
            t.iobb[name].append(M.iobb(region[k], box))
    cls = pairs.cls.cpu().numpy()
    bm = np.stack([M.box_mask((size, size), box) for _, box in items])
    for (k, _), m_ in zip(items, bm):
        t.loc_class.append(t.classes[cls[k]])
        t.loc_row.append(int(rows[k]))
        union = t.box_pooled.setdefault(int(rows[k]), np.zeros((size, size), bool))
        union |= m_
    ks = np.array([k for k, _ in items])
    c_, d_ = crop_drop(model, pairs.xn[ks], torch.from_numpy(bm).float()[:, None].to(pairs.xn.device))
    for j, (k, m_) in enumerate(zip(ks, bm)):
        c = cls[k]
        t.box_probs.append((t.classes[c], float(t.p_full[rows[k], c]), float(d_[j, c]), float(c_[j, c]),
                            float(m_.mean())))


def mask_pass(t: Tally, pairs: Pairs, names: list[str], truth: dict, maps: dict, ranked: dict, r0: float) -> None:
    """Per ground-truth mask of a pair's finding on its image (names: each pair's image): whether each map
    points into it, the share of its top-r region inside it, and their IoU."""
    cls = pairs.cls.cpu().numpy()
    items = [(k, m) for k, nm in enumerate(names) for f, m in truth.get(nm, ()) if f == t.classes[cls[k]]]
    if not items:
        return
    t.mask_class += [t.classes[cls[k]] for k, _ in items]
    for name in ranked:
        region = topk_mask(ranked[name], r0)[:, 0].cpu().numpy() > 0.5
        m_ = maps[name][:, 0].float().cpu().numpy()
        t.mask_scores[name] += [(M.pointing_in(m_[k], truth), *M.share_and_iou(region[k], truth)) for k, truth in items]


def evaluate_batch(t: Tally, model: ROIModel, explainers, x: torch.Tensor, idx: np.ndarray, y: np.ndarray,
                   names: list[str], boxes: dict, r0: float, n_examples: int, gens: dict, truth: dict | None = None
                   ) -> None:
    """All passes on one batch; gens: the seeded generators of the tie-breaking jitter and of ROAD's noise;
    truth: ground-truth masks (data.boxes.read_masks), where given."""
    xn = model.normalize(x)
    with torch.no_grad():
        t.p_full[idx] = torch.sigmoid(model.backbone(xn).float()).cpu().numpy()
    ent = batch_entries(t, y, names, boxes, xn, t.p_full[idx], truth)
    maps = {e.name: e(ent.pairs) for e in explainers}
    ranked = {e.name: jittered(maps[e.name], e.ties, gens["jitter"]) for e in explainers}
    masks = {k: topk_mask(v, r0) for k, v in ranked.items()}
    at_r0 = {k: crop_drop(model, ent.pairs.xn, m) for k, m in masks.items()}
    image_pass(t, ent, idx, masks, at_r0)
    if t.gallery is not None:
        feed_gallery(t.gallery, model, xn, ent, maps, at_r0, names, y, t.p_full[idx], boxes)
    if not len(ent.scored):
        return
    pairs, pb, si = ent.subset(ent.scored), ent.b[ent.scored], torch.from_numpy(ent.scored).to(xn.device)
    maps, ranked = ({k: v[si] for k, v in d.items()} for d in (maps, ranked))
    at_r0 = {k: (c[ent.scored], d[ent.scored]) for k, (c, d) in at_r0.items()}
    pair_pass(t, model, pairs, idx[pb], ranked, at_r0, r0, gens["road"])
    curve_pass(t, model, pairs, idx[pb], ranked, gens["curve"])
    localisation_pass(t, model, pairs, idx[pb], maps, ranked, r0)
    if truth:
        mask_pass(t, pairs, [names[b] for b in pb], truth, maps, ranked, r0)
    for k in first_pair_per_image(pb, pairs, bool(boxes)):
        if len(t.examples) >= n_examples:
            break
        b = int(pb[k])
        t.examples.append(example(model, xn[b], names[b], t.classes, y[b], boxes.get(names[b], []),
                                  {name: (maps[name][k, 0], ranked[name][k, 0]) for name in maps}, r0))


def feed_gallery(gallery: Gallery, model: ROIModel, xn: torch.Tensor, ent: Entries, maps: dict, at_r0: dict,
                 names: list[str], y: np.ndarray, p: np.ndarray, boxes: dict) -> None:
    """The batch's gallery cards, from the entries' maps and, where its first map has no tie-breaking
    jitter (so that its top-r is the passes'), their crop and drop probabilities at the model's ratio."""
    keys = list(zip(ent.b.tolist(), ent.pairs.cls.tolist()))
    drawn = {key: {n: m[k, 0] for n, m in maps.items()} for k, key in enumerate(keys)}
    first = None if gallery.explainers[0].ties else at_r0.get(gallery.explainers[0].name)
    probs = {key: (first[0][k], first[1][k]) for k, key in enumerate(keys)} if first else {}
    gallery.add(model, xn, names, y, p, boxes, drawn, probs)


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
    """One row of the report's example grid: the image, its boxes, each map (scaled to [0, 1]) and its
    top-r mask, and the probabilities of the true findings on the crop and the drop of the first
    explainer's (the learned map's) mask."""
    ex_maps = {}
    for key, (map_, rank) in maps.items():
        h = map_.float().cpu().numpy()  # shown without the tie-breaking jitter, which is only for top-r
        ex_maps[key] = {"map": (h - h.min()) / max(float(h.max() - h.min()), 1e-12),
                        "mask": topk_mask(rank[None, None].float(), r)[0, 0].cpu().numpy() > 0.5}
    labels = [c for c, v in zip(classes, yrow) if v > 0.5]
    m = topk_mask(next(iter(maps.values()))[1][None, None].float(), r)
    with torch.no_grad():
        out = torch.sigmoid(model.backbone(torch.cat([xn[None], *model.crop_drop(xn[None], m)])).float())
    probs = {k: {c: float(out[j, classes.index(c)]) for c in labels} for j, k in enumerate(("full", "crop", "drop"))}
    return {"image": name, "labels": labels, "gray": model.to_gray(xn).cpu().numpy(), "boxes": boxes,
            "maps": ex_maps, "probs": probs}


def evaluate_model(model: ROIModel, ds: ImageCSVDataset, boxes: dict, explainers, ratios: list[float], r0: float,
                   opt: EvalOptions, device: torch.device, gallery: Gallery | None = None,
                   truth: dict | None = None) -> Tally:
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
                       boxes, r0, opt.n_examples, gens, truth)
    return t
