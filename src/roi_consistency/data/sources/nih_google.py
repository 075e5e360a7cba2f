"""The Google relabels of NIH ChestX-ray14 (Majkowska et al. 2020): four findings adjudicated by
radiologists on 4,376 NIH films, a cleaner test set for a model trained on NIH. --data-root is the NIH
folder (its unified images/), holding Google's label files:
four_findings_expert_labels_validation_labels.csv and four_findings_expert_labels_test_labels.csv, or
torchxrayvision's google2019_nih-chest-xray-labels.csv, which joins them with a Set Id column.

Google's validation films come from NIH's train_val list, its test films from NIH's test list: only the test
split is unseen by a model trained on NIH's training split. Labels are YES or NO.
"""
from __future__ import annotations

from pathlib import Path

from roi_consistency.data.sources.films import Box, Film, Options
from roi_consistency.errors import UserError
from roi_consistency.files.text import read_table

FINDINGS = ("Airspace opacity", "Fracture", "Nodule or mass", "Pneumothorax")
FILES = {"val": "four_findings_expert_labels_validation_labels.csv",
         "test": "four_findings_expert_labels_test_labels.csv"}
JOINED = "google2019_nih-chest-xray-labels.csv"
SET_ID = {"validation": "val", "val": "val", "test": "test"}
KAGGLE = None  # not on Kaggle: SOURCE says where
SOURCE = ("The Google relabels are public on Google Cloud: https://cloud.google.com/healthcare/docs/resources/"
          "public-datasets/nih-chest (the four_findings_expert_labels folder). Put its two CSVs in the NIH folder, "
          "next to the unified images/ folder, and give that folder as --data-root.")


def read(root: Path, options: Options) -> tuple[list[Film], list[Box]]:
    """Google's validation and test films, each in its official split."""
    if (root / JOINED).is_file():
        return _films(root / JOINED, None), []
    if not all((root / f).is_file() for f in FILES.values()):
        raise UserError(f"--data-root {root}: neither {JOINED} nor {FILES['val']} and {FILES['test']} there. {SOURCE}")
    return _films(root / FILES["val"], "val") + _films(root / FILES["test"], "test"), []


def _films(path: Path, split: str | None) -> list[Film]:
    _, records = read_table(path, ("Image Index", "Patient ID", *FINDINGS) + (() if split else ("Set Id",)))
    films = []
    for line_no, row in records:
        values = {f: row[f].strip().upper() for f in FINDINGS}
        bad = next((v for v in values.values() if v not in ("YES", "NO")), None)
        if bad is not None:
            raise UserError(f"{path} line {line_no}: label {bad[:10]!r}; Google's are YES or NO")
        where = split or SET_ID.get(row["Set Id"].strip())
        if where is None:
            raise UserError(f"{path} line {line_no}: Set Id {row['Set Id'][:20]!r}; expected val or test")
        films.append(Film(f"images/{row['Image Index'].strip()}", tuple(f for f, v in values.items() if v == "YES"),
                          patient=row["Patient ID"].strip(), split=where))
    return films
