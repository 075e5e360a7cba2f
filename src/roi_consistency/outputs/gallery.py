"""gallery.html: every evaluated test image, to browse, sort and filter, from the file system.

One card per (image, finding): every true finding of an image (a true positive or a missed finding at
the checkpoint's thresholds), every finding called positive that is not there (a false positive), and
for an image with neither, its most probable finding (a true negative). Thumbnails and detail views
are small JPEGs in `gallery/` beside the page, loaded lazily, so the page stays fast with NIH's 25,596
test images; the cards' data sit in the page as JSON. The cards are rendered during evaluate's passes,
batch by batch, from the maps and crop/drop probabilities the passes compute, so the gallery computes little of its own.

The detail view shows the image with its boxes, then the learned map, Grad-CAM and the random map,
each with its mask (the model's keep ratio) outlined, and p full / crop / drop of the finding with the
learned map's mask.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from roi_consistency.evaluation.explainers import Pairs
from roi_consistency.evaluation.metrics import pointing_hit
from roi_consistency.evaluation.schema import GallerySection
from roi_consistency.evaluation.thresholds import called
from roi_consistency.files.atomic import write_text
from roi_consistency.model.masks import topk_mask
from roi_consistency.outputs.gallery_page import TEMPLATE
from roi_consistency.outputs.overlay import overlay

THUMB = 96  # px
FOLDER = "gallery"


def cards_of(names: list[str], y: np.ndarray, p: np.ndarray, classes: list[str], thresholds: dict | None) -> list:
    """(row, class, category) per card, a finding called positive as infer's `positive` calls it. A finding
    whose label is unknown is neither true nor false: it gets no card."""
    hits = called(p, classes, thresholds)
    out = []
    for i in range(len(names)):
        true, false = y[i] > 0.5, y[i] < 0.5  # NaN: neither
        row = [(i, int(c), "TP" if hits[i, c] else "missed") for c in np.flatnonzero(true)]
        row += [(i, int(c), "FP") for c in np.flatnonzero(hits[i] & false)]
        if not row and false.any():
            row = [(i, int(np.flatnonzero(false)[p[i, false].argmax()]), "TN")]
        out += row
    return out


def _panel(gray: np.ndarray, map_: np.ndarray | None, mask: np.ndarray | None, boxes) -> Image.Image:
    rgb = overlay(gray, map_, mask) if map_ is not None else (np.repeat(gray[..., None], 3, 2) * 255).astype(np.uint8)
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    for _, x, y, w, h in boxes:
        draw.rectangle([x, y, x + w, y + h], outline=(0, 255, 0))
    return im


def render(out: Path, k: int, gray: np.ndarray, maps: dict, r: float, boxes) -> None:
    """gallery/thumb/<k>.jpg (the image, the learned map's mask outlined) and gallery/detail/<k>.jpg (the
    image with its boxes, then each map with its mask)."""
    panels = [_panel(gray, None, None, boxes)]
    for map_ in maps.values():
        mask = topk_mask(torch.from_numpy(map_)[None, None], r)[0, 0].numpy() > 0.5
        panels.append(_panel(gray, map_, mask, boxes))
    size = gray.shape[0]
    detail = Image.new("RGB", (size * len(panels), size))
    for j, im in enumerate(panels):
        detail.paste(im, (j * size, 0))
    detail.save(out / "detail" / f"{k}.jpg", quality=85)
    panels[1].resize((THUMB, THUMB), Image.BILINEAR).save(out / "thumb" / f"{k}.jpg", quality=80)


class Gallery:
    """The cards, rendered batch by batch from the maps evaluate's passes have just drawn, and with their
    crop and drop at the model's ratio. Only a card the passes did not explain (a false positive that is not its
    image's most probable finding) has its maps drawn here, by the gallery's own `explainers`, so the random
    control's draws in the passes are the same with or without a gallery. Then the page. `limit`: the
    first N test images only."""

    def __init__(self, page: Path, classes: list[str], thresholds: dict | None, r: float, explainers,
                 limit: int | None = None):
        self.page, self.classes, self.thresholds, self.r, self.limit = page, classes, thresholds, r, limit
        self.explainers = explainers
        self.out, self.records, self.n_images = page.parent / FOLDER, [], 0
        for sub in ("thumb", "detail"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)

    def add(self, model, xn: torch.Tensor, names: list[str], y: np.ndarray, p: np.ndarray, boxes: dict,
            drawn: dict, probs: dict | None = None) -> None:
        """A batch's cards: its images xn (normalised), their labels y and p_full p; `drawn`: {(row in the
        batch, class): {map name: map [H,W]}} of the pairs the passes explained; `probs`: {(row, class):
        (p crop [C], p drop [C])} with the first map's mask at the model's ratio, where the passes have them."""
        cards = cards_of(names, y, p, self.classes, self.thresholds)
        if self.limit is not None:
            room = sorted({b for b, _, _ in cards})[:max(0, self.limit - self.n_images)]
            cards = [cd for cd in cards if cd[0] in room]
        if not cards:
            return
        self.n_images += len({b for b, _, _ in cards})
        todo = [k for k, (b, c, _) in enumerate(cards) if (b, c) not in drawn]
        if todo:  # maps of the cards the passes did not draw
            at = torch.tensor([cards[k][0] for k in todo], device=xn.device)
            pairs = Pairs(xn[at], torch.tensor([cards[k][1] for k in todo], device=xn.device), [[] for _ in todo])
            new = {e.name: e(pairs)[:, 0] for e in self.explainers}
            drawn = {**drawn, **{cards[k][:2]: {n: m[j] for n, m in new.items()} for j, k in enumerate(todo)}}
        maps = {e.name: torch.stack([drawn[(b, c)][e.name] for b, c, _ in cards]).float().cpu().numpy()
                for e in self.explainers}
        probs = self._crop_drop(model, xn, cards, maps, probs or {})
        for j, (b, c, cat) in enumerate(cards):
            bx = [bb for bb in boxes.get(names[b], ()) if bb[0] == self.classes[c]]
            rec = self._render(model.to_gray(xn[b]).cpu().numpy(), {n: m[j] for n, m in maps.items()}, bx)
            rec.update(image=names[b], finding=self.classes[c], category=cat, p_full=float(p[b, c]),
                       p_crop=float(probs[j][0][c]), p_drop=float(probs[j][1][c]),
                       labels=[f for f, v in zip(self.classes, y[b]) if v > 0.5])
            self.records.append(rec)

    def _crop_drop(self, model, xn: torch.Tensor, cards: list, maps: dict, given: dict) -> list:
        """Per card, (p crop, p drop) with the first map's mask: the passes' where given, else computed."""
        todo = [j for j, (b, c, _) in enumerate(cards) if (b, c) not in given]
        out = [given.get((b, c)) for b, c, _ in cards]
        if todo:
            first = maps[self.explainers[0].name][todo]
            mask = topk_mask(torch.from_numpy(first)[:, None], self.r).to(xn.device)
            crop, drop = (v.cpu().numpy() for v in model.crop_drop_probs(xn[[cards[j][0] for j in todo]], mask))
            for i, j in enumerate(todo):
                out[j] = (crop[i], drop[i])
        return out

    def _render(self, gray: np.ndarray, maps: dict, boxes: list) -> dict:
        """One card's JPEGs; its record so far."""
        k = len(self.records)
        render(self.out, k, gray, maps, self.r, boxes)
        hit = [pointing_hit(next(iter(maps.values())), bb[1:]) for bb in boxes]
        return {"id": k, "hit": None if not hit else bool(any(hit)), "maps": list(maps)}

    def finish(self) -> GallerySection:
        """Write the page; returns metrics.json's gallery section."""
        write_text(self.page, page_html(self.records, self.classes))
        size = sum(f.stat().st_size for f in self.out.rglob("*.jpg"))
        return {"page": self.page.name, "n_cards": len(self.records), "n_images": self.n_images,
                "folder_bytes": int(size)}


def page_html(records: list[dict], classes: list[str]) -> str:
    for rec in records:
        rec["faithfulness"] = rec["p_full"] - rec["p_drop"]
    data = json.dumps(records).replace("</", "<\\/")  # no "</script>" inside the data
    options = "".join(f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in classes)
    return TEMPLATE.replace("%DATA%", data).replace("%FINDINGS%", options).replace("%FOLDER%", FOLDER)

