"""PadChest (Bustos et al. 2020) as BIMCV distributes it: PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv
and the image folders 0/ … 54/ (16-bit PNGs) under --data-root.

- Films: the frontal ones (Projection PA, AP or AP_horizontal); laterals and others are left out, and so
  are films whose report was marked 'exclude' or 'suboptimal study', or has no labels.
- Labels: the report's labels as PadChest spells them (lowercase, e.g. 'pleural effusion'), 'normal' as no
  finding; nearly 200 names, a quarter of the films labelled by physicians, the rest by PadChest's text model.
- Split: there is none official; test and validation patients are drawn.
"""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from roi_consistency.data.labels import LabelError, finding
from roi_consistency.data.sources.films import Box, Film, Options, metadata
from roi_consistency.errors import UserError

CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
FRONTAL = ("PA", "AP", "AP_horizontal")
LEFT_OUT = ("exclude", "suboptimal study")
KAGGLE = None  # not on Kaggle: SOURCE says where
SOURCE = ("PadChest needs a request to BIMCV: https://bimcv.cipf.es/bimcv-projects/padchest/ (1 TB in 55 zips). "
          f"Unpack the zips and {CSV} (gunzipped) so that DATA_ROOT/{CSV} and DATA_ROOT/0/ … exist, and give "
          "--data-root DATA_ROOT.")


def read(root: Path, options: Options) -> tuple[list[Film], list[Box]]:
    path, records = metadata(root, CSV, ("ImageID", "ImageDir", "PatientID", "Projection", "Labels"), SOURCE)
    films, dropped = [], Counter()
    for line_no, row in records:
        if row["Projection"].strip() not in FRONTAL:
            dropped["not frontal"] += 1
            continue
        names = _labels(row["Labels"], f"{path} line {line_no}")
        if names is None or set(names) & set(LEFT_OUT):
            dropped["no labels" if names is None else "excluded or suboptimal"] += 1
            continue
        image = f"{row['ImageDir'].strip()}/{row['ImageID'].strip()}"
        films.append(Film(image, tuple(n for n in names if n != "normal"), patient=row["PatientID"].strip()))
    print(f"{path}: {len(films):,} frontal films; left out: " + ", ".join(f"{k} {v:,}" for k, v in dropped.items()))
    return films, []


def _labels(text: str, where: str) -> list[str] | None:
    """"['pleural effusion', 'cardiomegaly']" -> its names; None for a film without labels (nan)."""
    text = text.strip()
    if text in ("", "nan"):
        return None
    try:
        names = ast.literal_eval(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError
        return list(dict.fromkeys(finding(n) for n in names if n.strip())) or None
    except (ValueError, SyntaxError, LabelError):
        raise UserError(f"{where}: Labels {text[:40]!r} is not a list of finding names like ['normal']") from None
