"""RSNA Pneumonia Detection (Shih et al. 2019) as its Kaggle competition copy: stage_2_train_labels.csv and
stage_2_train_images/<patientId>.dcm under --data-root.

Each row is a film (its patientId names one film) with Target 1 and a box of a lung opacity suggestive of
pneumonia, or Target 0 without one; a film with several opacities has a row for each. The finding is named
Pneumonia. The competition's test films have no labels, so test and validation films are drawn.
"""
from __future__ import annotations

from pathlib import Path

from roi_consistency.data.sources.films import Box, Film, Options, metadata
from roi_consistency.errors import UserError

FINDINGS = ("Pneumonia",)
KAGGLE = ("competition", "rsna-pneumonia-detection-challenge")
SOURCE = ("RSNA Pneumonia Detection needs a Kaggle account that accepted the competition rules: kaggle "
          "competitions download -c rsna-pneumonia-detection-challenge (4 GB). Unpack it so that "
          "DATA_ROOT/stage_2_train_labels.csv and DATA_ROOT/stage_2_train_images/ exist, and give --data-root "
          "DATA_ROOT.")


def read(root: Path, options: Options) -> tuple[list[Film], list[Box]]:
    """A film per patientId, positive where any of its rows has Target 1, and a box per such row."""
    path, records = metadata(root, "stage_2_train_labels.csv", ("patientId", "x", "y", "width", "height", "Target"),
                             SOURCE)
    positive: dict[str, bool] = {}
    boxes = []
    for line_no, row in records:
        pid, target = row["patientId"].strip(), row["Target"].strip()
        if target not in ("0", "1"):
            raise UserError(f"{path} line {line_no}: Target {target[:10]!r}; RSNA's is 0 or 1")
        positive[pid] = positive.get(pid, False) or target == "1"
        if target == "1":
            try:
                x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
            except ValueError:
                raise UserError(f"{path} line {line_no}: a Target 1 row needs a box (x, y, width, height)") from None
            boxes.append(Box(_image(pid), "Pneumonia", x, y, w, h))
    return [Film(_image(p), ("Pneumonia",) if pos else (), patient=p) for p, pos in positive.items()], boxes


def _image(pid: str) -> str:
    return f"stage_2_train_images/{pid}.dcm"
