"""SIIM-ACR Pneumothorax Segmentation (2019) as the competition laid it out: train-rle.csv and
dicom-images-train/<study>/<series>/<ImageId>.dcm under --data-root.

train-rle.csv has a row per pneumothorax region of a film, or one row of -1 for a film without. Its
run-length code is the competition's own: pairs of (offset, length), each offset counted from the end
of the previous run, over the film's pixels in column-major order (`rle_mask`). Each film's regions are
written as one PNG mask, siim_masks/Pneumothorax/<ImageId>.png beside the CSVs (`evaluate --masks
siim_masks`), at the film's own size, and each region's bounding box goes to siim_boxes.csv. There are no
patient ids, and the competition's test films have no public labels, so test and validation films are
drawn image-wise.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from roi_consistency.data.dicom import read_header
from roi_consistency.data.sources.films import Box, Film, Options
from roi_consistency.errors import UserError
from roi_consistency.files.atomic import write_png
from roi_consistency.files.text import read_table

FINDINGS = ("Pneumothorax",)
IMAGES = "dicom-images-train"
MASKS = "siim_masks"
RLE_LIMIT = 100_000  # characters of one region's code: the longest in the competition's file is 7,836
KAGGLE = ("dataset", "jesperdramsch/siim-acr-pneumothorax-segmentation-data")
SOURCE = ("SIIM-ACR Pneumothorax needs a Kaggle account: its stage 1 data (train-rle.csv and dicom-images-train/) "
          "is kept at https://www.kaggle.com/datasets/jesperdramsch/siim-acr-pneumothorax-segmentation-data. "
          "Unpack it so that DATA_ROOT/train-rle.csv and DATA_ROOT/dicom-images-train/ exist, and give --data-root "
          "DATA_ROOT.")


def rle_mask(text: str, width: int, height: int) -> np.ndarray:
    """A region of the competition's run-length code as a bool mask [height, width]."""
    try:
        v = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise ValueError("not whole numbers") from None
    if len(v) == 0 or len(v) % 2 or (v < 0).any():
        raise ValueError("not pairs of offsets and lengths")
    if (v > width * height).any() or np.cumsum(v[0::2] + v[1::2])[-1] > width * height:
        raise ValueError(f"runs past the film's {width}x{height} pixels")
    ends = np.cumsum(v[0::2] + v[1::2])  # each offset counts from the end of the previous run
    if not v[1::2].any():
        raise ValueError("no pixel in the region")
    change = np.zeros(width * height + 1, np.int64)
    np.add.at(change, ends - v[1::2], 1)
    np.add.at(change, ends, -1)
    return (np.cumsum(change[:-1]) > 0).reshape(width, height).T  # column-major


def read(root: Path, options: Options) -> tuple[list[Film], list[Box]]:
    """A film per ImageId, positive where it has a region; each region's box, and (with options.out_dir)
    each positive film's mask."""
    path = root / "train-rle.csv"
    if not path.is_file() or not (root / IMAGES).is_dir():
        raise UserError(f"--data-root {root}: no train-rle.csv and {IMAGES}/ there. {SOURCE}")
    where = {Path(f).stem: os.path.relpath(os.path.join(d, f), root)
             for d, _, files in os.walk(root / IMAGES) for f in files if f.endswith(".dcm")}
    _, records = read_table(path, ("ImageId", "EncodedPixels"), limit=RLE_LIMIT)
    regions: dict[str, list[tuple[int, str]]] = {}
    for line_no, row in records:
        code = row["EncodedPixels"].strip()
        regions.setdefault(row["ImageId"].strip(), [])
        if code != "-1":
            regions[row["ImageId"].strip()].append((line_no, code))
    films, boxes = [], []
    for image_id, rles in regions.items():
        image = where.get(image_id, f"{IMAGES}/{image_id}.dcm")  # not found: present() names it missing
        films.append(Film(image, FINDINGS if rles else ()))
        if rles and image_id in where:
            boxes += _regions(root, image, image_id, rles, f"{path}", options.out_dir)
    return films, boxes


def _regions(root: Path, image: str, image_id: str, rles: list[tuple[int, str]], path: str,
             out_dir: str | None) -> list[Box]:
    """A film's region boxes, and its mask written where out_dir is given."""
    head = read_header(root / image)
    union, boxes = np.zeros((head.rows, head.cols), bool), []
    for line_no, code in rles:
        try:
            m = rle_mask(code, head.cols, head.rows)
        except ValueError as exc:
            raise UserError(f"{path} line {line_no}: EncodedPixels {code[:30]!r}…: {exc}") from None
        ys, xs = np.nonzero(m)
        boxes.append(Box(image, "Pneumothorax", float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                         float(ys.max() - ys.min() + 1)))
        union |= m
    if out_dir is not None:
        write_png(Path(out_dir) / MASKS / "Pneumothorax" / f"{image_id}.png", union.astype(np.uint8) * 255)
    return boxes
