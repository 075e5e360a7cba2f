"""gallery.html: every evaluated test image, to browse, sort and filter, from the file system.

One card per (image, finding): every true finding of an image (a true positive or a missed finding at
the checkpoint's thresholds), every finding called positive that is not there (a false positive), and
for an image with neither, its most probable finding (a true negative). Thumbnails and detail views
are small JPEGs in `gallery/` beside the page, loaded lazily, so the page stays fast with NIH's 25,596
test images; the cards' data sit in the page as JSON.

The detail view shows the image with its boxes, then the learned map, Grad-CAM and the random map,
each with its kept region (the model's keep ratio) outlined, and p full / crop / drop of the finding
with the learned region.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from roi_consistency.atomic import write_text
from roi_consistency.calibrate import called
from roi_consistency.explainers import Pairs
from roi_consistency.gallery_page import TEMPLATE
from roi_consistency.infer import overlay
from roi_consistency.metrics import pointing_hit
from roi_consistency.model import topk_mask

THUMB = 96  # px
FOLDER = "gallery"


def cards_of(names: list[str], y: np.ndarray, p: np.ndarray, classes: list[str], thresholds: dict | None) -> list:
    """(row, class, category) per card, a finding called positive as infer's `positive` calls it."""
    hits = called(p, classes, thresholds)
    out = []
    for i in range(len(names)):
        true = y[i] > 0.5
        row = [(i, int(c), "TP" if hits[i, c] else "missed") for c in np.flatnonzero(true)]
        row += [(i, int(c), "FP") for c in np.flatnonzero(hits[i] & ~true)]
        out += row or [(i, int(p[i].argmax()), "TN")]
    return out


def _panel(gray: np.ndarray, heat: np.ndarray | None, region: np.ndarray | None, boxes) -> Image.Image:
    rgb = overlay(gray, heat, region) if heat is not None else (np.repeat(gray[..., None], 3, 2) * 255).astype(np.uint8)
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    for _, x, y, w, h in boxes:
        draw.rectangle([x, y, x + w, y + h], outline=(0, 255, 0))
    return im


def render(out: Path, k: int, gray: np.ndarray, maps: dict, r: float, boxes) -> None:
    """gallery/thumb/<k>.jpg (the image, the learned region outlined) and gallery/detail/<k>.jpg (the image
    with its boxes, then each map with its kept region)."""
    panels = [_panel(gray, None, None, boxes)]
    for heat in maps.values():
        region = topk_mask(torch.from_numpy(heat)[None, None], r)[0, 0].numpy() > 0.5
        panels.append(_panel(gray, heat, region, boxes))
    size = gray.shape[0]
    detail = Image.new("RGB", (size * len(panels), size))
    for j, im in enumerate(panels):
        detail.paste(im, (j * size, 0))
    detail.save(out / "detail" / f"{k}.jpg", quality=85)
    panels[1].resize((THUMB, THUMB), Image.BILINEAR).save(out / "thumb" / f"{k}.jpg", quality=80)


def write_gallery(page: Path, model, ds, boxes: dict, rows: np.ndarray, p: np.ndarray, explainers, r: float,
                  thresholds: dict | None, batch: int = 16, limit: int | None = None) -> dict:
    """Render the cards of the test-set `rows` (with their p_full) and write the page; returns its summary."""
    y = ds.labels[rows]
    cards = cards_of([ds.names[i] for i in rows], y, p, ds.classes, thresholds)
    if limit is not None:
        keep = set(sorted({c[0] for c in cards})[:limit])
        cards = [c for c in cards if c[0] in keep]
    out = page.parent / FOLDER
    for sub in ("thumb", "detail"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    records = []
    for s in range(0, len(cards), batch):
        records += _render_batch(out, s, cards[s:s + batch], model, ds, boxes, rows, explainers, r)
    for rec, (i, c, cat) in zip(records, cards):
        rec.update(finding=ds.classes[c], category=cat, labels=[f for f, v in zip(ds.classes, y[i]) if v > 0.5],
                   p_full=float(p[i, c]))
    write_text(page, page_html(records, ds.classes))
    size = sum(f.stat().st_size for f in out.rglob("*.jpg"))
    return {"n_cards": len(records), "n_images": len({c[0] for c in cards}), "folder_bytes": int(size)}


def _render_batch(out: Path, start: int, cards: list, model, ds, boxes: dict, rows, explainers, r: float) -> list:
    dev = model.mean.device
    x = torch.stack([ds[int(rows[i])][0] for i, _, _ in cards]).to(dev)
    names = [ds.names[int(rows[i])] for i, _, _ in cards]
    bx = [[b for b in boxes.get(n, ()) if b[0] == ds.classes[c]] for n, (_, c, _) in zip(names, cards)]
    pairs = Pairs(model.normalize(x), torch.tensor([c for _, c, _ in cards], device=dev),
                  [[tuple(b[1:]) for b in bb] for bb in bx])
    maps = {e.name: e(pairs)[:, 0].float().cpu().numpy() for e in explainers}
    learned = topk_mask(torch.from_numpy(maps[explainers[0].name])[:, None], r).to(dev)
    with torch.no_grad():
        crop, drop = model.crop_drop(pairs.xn, learned.to(pairs.xn.dtype))
        pc = torch.sigmoid(model.backbone(torch.cat([crop, drop])).float()).cpu().numpy()
    gray = model.to_gray(pairs.xn).cpu().numpy()
    recs = []
    for j, (name, (_, c, _)) in enumerate(zip(names, cards)):
        k = start + j
        render(out, k, gray[j], {n: m[j] for n, m in maps.items()}, r, bx[j])
        hit = [pointing_hit(maps[explainers[0].name][j], b[1:]) for b in bx[j]]
        recs.append({"id": k, "image": name, "p_crop": float(pc[j, c]), "p_drop": float(pc[len(cards) + j, c]),
                     "hit": None if not hit else bool(any(hit)), "maps": [e.name for e in explainers]})
    return recs


def page_html(records: list[dict], classes: list[str]) -> str:
    for rec in records:
        rec["faithfulness"] = rec["p_full"] - rec["p_drop"]
    data = json.dumps(records).replace("</", "<\\/")  # no "</script>" inside the data
    options = "".join(f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in classes)
    return TEMPLATE.replace("%DATA%", data).replace("%FINDINGS%", options).replace("%FOLDER%", FOLDER)

