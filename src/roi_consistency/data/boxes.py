"""Ground-truth boxes (BBox_List_2017.csv's layout, any dataset's finding names): read, and scaled to the
model's input pixels."""
from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.data.images import source_size
from roi_consistency.data.labels import LabelError, finding
from roi_consistency.data.vocabulary import class_of
from roi_consistency.errors import UserError
from roi_consistency.files.text import csv_rows, shown

Box = tuple[str, float, float, float, float]  # finding, x, y, w, h


def read_boxes(path: str | Path) -> dict[str, list[Box]]:
    """BBox_List_2017.csv -> {image: [(finding, x, y, w, h)]} in the PNG's own pixels. Only the first
    six fields of a row are read (the header has three empty trailing names)."""
    boxes = defaultdict(list)
    rows = csv_rows(path, "box list")
    next(rows, None)
    for line_no, row in rows:
        if not row[0].strip():
            continue
        try:
            name, (x, y, w, h) = finding(row[1]), map(float, row[2:6])
        except (LabelError, ValueError, IndexError) as exc:
            raise UserError(f"{path} line {line_no}: {exc}; expected Image Index,Finding Label,x,y,w,h") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise UserError(f"{path} line {line_no}: box {x:g},{y:g},{w:g},{h:g} is not a box; give x,y,w,h in "
                            "the image's pixels, with w and h above 0")
        boxes[row[0].strip()].append((name, x, y, w, h))
    return dict(boxes)


def scale_box(box, src_size: tuple[int, int], dst: int):
    """Scale (x, y, w, h) from the PNG's pixel size (w, h) to the model's dst x dst input."""
    sx, sy = dst / src_size[0], dst / src_size[1]
    x, y, w, h = box
    return (x * sx, y * sy, w * sx, h * sy)


def film_size(ds: ImageCSVDataset, name: str) -> tuple[int, int]:
    """A film's own (width, height), which boxes and masks refer to: from the cache's index where there is
    one, else from the file's header."""
    src = ds.cache.source_size(name) if ds.cache is not None else None
    return src or source_size(ds.root / name)


def to_model_pixels(ds: ImageCSVDataset, boxes: dict[str, list[Box]], size: int, source: str) -> dict[str, list[Box]]:
    """Boxes in each file's own pixels, scaled to the model's size x size input: the file's size comes from
    the cache's index where there is one, else the image header. A box outside its image is an error
    naming `source`, the box list."""
    out = {}
    for name, bxs in boxes.items():
        src = film_size(ds, name)
        for f, x, y, w, h in bxs:
            if x >= src[0] or y >= src[1] or x + w <= 0 or y + h <= 0:
                raise UserError(f"{source}: the {f} box of {shown(name)} ({x:g},{y:g},{w:g},{h:g}) lies outside the "
                                f"image ({src[0]}x{src[1]} px); boxes are in the image's own pixels")
        out[name] = [(b[0], *scale_box(b[1:], src, size)) for b in bxs]
    return out


def read_masks(folder: str, ds: ImageCSVDataset, classes: list[str], size: int
               ) -> dict[str, list[tuple[str, np.ndarray]]]:
    """{image: [(finding, bool mask [size, size])]} from FOLDER/<finding>/<image stem>.png (nonzero: the
    region, at the film's own size), for the dataset's images, each finding named as the model names it. A
    mask that covers no model pixel once scaled (under half of every pixel) is left out."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--masks {folder}: no such folder; give one that holds a folder per finding of "
                        "<image stem>.png masks")
    found = {d.name: class_of(d.name, classes) for d in sorted(root.iterdir()) if d.is_dir()}
    if not any(found.values()):
        raise UserError(f"--masks {folder}: no folder named after a finding the model scores ({', '.join(classes)})")
    stems = Counter(Path(n).stem for n in ds.names)
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name in ds.names:
        for sub, cls in found.items():
            path = root / sub / (Path(name).stem + ".png")
            if cls and path.is_file():
                if stems[Path(name).stem] > 1:
                    raise UserError(f"--masks {folder}: masks are matched by file name, and {stems[Path(name).stem]} "
                                    f"films of the CSV are named {Path(name).stem}; rename them apart")
                m = scaled_mask(path, ds, name, size)
                if m.any():
                    out.setdefault(name, []).append((cls, m))
    return out


def scaled_mask(path: Path, ds: ImageCSVDataset, name: str, size: int) -> np.ndarray:
    """A mask file (nonzero: the region) at the model's size x size: a pixel is in it where the mask covers at
    least half of it. The mask must have its film's size."""
    try:
        with Image.open(path) as im:
            region = (np.asarray(im.convert("L")) > 0).astype(np.uint8) * 255
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"--masks: {path} could not be read ({exc})") from None
    src = film_size(ds, name)
    if region.shape[::-1] != tuple(src):
        raise UserError(f"--masks: {path} is {region.shape[1]}x{region.shape[0]} px but its film {shown(name)} is "
                        f"{src[0]}x{src[1]}; a mask has its film's size")
    return np.asarray(Image.fromarray(region).resize((size, size), Image.BOX)) >= 128


def model_boxes(ds: ImageCSVDataset, bbox: str | None, classes: list[str], size: int) -> dict[str, list[Box]]:
    """{image: [(finding, x, y, w, h) in model-input pixels]} for the dataset's images with boxes of the
    model's findings, each named as the model names it (vocabulary.py)."""
    if not bbox:
        return {}
    wanted = set(ds.names)
    listed = {n: bxs for n, bxs in read_boxes(bbox).items() if n in wanted}
    as_class = {f: class_of(f, classes) for f in {b[0] for bxs in listed.values() for b in bxs}}
    others = sorted(f for f, c in as_class.items() if c is None)
    if others:
        print(f"warning: --bbox {bbox}: boxes of findings the model does not score are left out: "
              f"{', '.join(map(shown, others))}", file=sys.stderr)
    boxes = {n: [(as_class[b[0]], *b[1:]) for b in bxs if as_class[b[0]]] for n, bxs in listed.items()}
    return to_model_pixels(ds, {n: bxs for n, bxs in boxes.items() if bxs}, size, f"--bbox {bbox}")
