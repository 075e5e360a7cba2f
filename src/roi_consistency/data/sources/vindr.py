"""VinDr-CXR (Nguyen et al. 2022) as its Kaggle competition copy (vinbigdata-chest-xray-abnormalities-
detection): train.csv and train/<image_id>.dicom under --data-root.

Each film was read by three radiologists, each row of train.csv one reader's finding (with its box) or
"No finding". The image-level label, per finding: positive where most of the film's readers marked it,
unknown where some but not most did, negative where none did. Every reader's box is kept, with its reader.
There are no patient ids and the competition's test films have no labels, so test and validation films
are drawn image-wise.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from roi_consistency.data.sources.films import Box, Film, Options, metadata
from roi_consistency.errors import UserError

FINDINGS = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
            "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening",
            "Pneumothorax", "Pulmonary fibrosis")
NO_FINDING = "No finding"
KAGGLE = ("competition", "vinbigdata-chest-xray-abnormalities-detection")
SOURCE = ("VinDr-CXR's Kaggle copy needs a Kaggle account that accepted the competition rules: "
          "kaggle competitions download -c vinbigdata-chest-xray-abnormalities-detection (206 GB). Unpack it so "
          "that DATA_ROOT/train.csv and DATA_ROOT/train/ exist, and give --data-root DATA_ROOT.")


def read(root: Path, options: Options) -> tuple[list[Film], list[Box]]:
    """Films with the readers' majority as labels, and every reader's box."""
    path, records = metadata(root, "train.csv", ("image_id", "class_name", "rad_id", "x_min", "y_min", "x_max",
                                                 "y_max"), SOURCE)
    readers, marks, boxes = defaultdict(set), defaultdict(lambda: defaultdict(set)), []
    for line_no, row in records:
        image, name, reader = row["image_id"].strip(), row["class_name"].strip(), row["rad_id"].strip()
        readers[image].add(reader)
        if name == NO_FINDING:
            continue
        if name not in FINDINGS:
            raise UserError(f"{path} line {line_no}: class {name[:40]!r} is not one of VinDr-CXR's")
        marks[image][name].add(reader)
        box = _box(row, f"{path} line {line_no}")
        if box:
            boxes.append(Box(f"train/{image}.dicom", name, *box, reader))
    films = []
    for image in readers:  # the order of train.csv
        n, marked = len(readers[image]), marks[image]
        films.append(Film(f"train/{image}.dicom", tuple(f for f in FINDINGS if 2 * len(marked[f]) > n),
                          tuple(f for f in FINDINGS if 0 < 2 * len(marked[f]) <= n)))
    return films, boxes


def _box(row: dict, where: str) -> tuple[float, float, float, float] | None:
    """(x, y, w, h) of a row's box; None for a row without one (VinDr's image-level labels)."""
    text = [row[k].strip() for k in ("x_min", "y_min", "x_max", "y_max")]
    if not any(text):
        return None
    try:
        x0, y0, x1, y1 = map(float, text)
    except ValueError:
        raise UserError(f"{where}: box {','.join(text)[:40]} is not four numbers") from None
    if not x1 > x0 >= 0 or not y1 > y0 >= 0:
        raise UserError(f"{where}: box {','.join(text)} is not a box (x_min < x_max, y_min < y_max, from 0)")
    return x0, y0, x1 - x0, y1 - y0
