"""CheXpert (Irvin et al. 2019) as Stanford distributes it: `CheXpert-v1.0-small/` (or the full-size
`CheXpert-v1.0/`) with train.csv, valid.csv and the JPEG folders, under --data-root.

- Films: the frontal ones (the method explains frontal films); the count of laterals left out is printed.
- Labels: 1 positive; 0 and blank (not mentioned in the report) negative; -1 (uncertain) as --uncertain
  says: ignore (unknown, the default), zeros or ones. `No Finding` is no finding of its own.
- Split: valid.csv, read by radiologists, is the test split; validation patients are drawn from train.
"""
from __future__ import annotations

from pathlib import Path

from roi_consistency.data.sources.films import Film, Options
from roi_consistency.errors import UserError
from roi_consistency.files.text import read_table

FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
            "Lung Lesion", "Lung Opacity", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax",
            "Support Devices")
FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
UNCERTAIN = ("ignore", "zeros", "ones")
KAGGLE = None  # not on Kaggle: SOURCE says where
SOURCE = ("CheXpert needs a free registration with Stanford AIMI: https://stanfordaimi.azurewebsites.net/datasets "
          "(CheXpert-v1.0-small, 11 GB). Unpack it so that DATA_ROOT/CheXpert-v1.0-small/train.csv exists, and "
          "give --data-root DATA_ROOT.")


def read(root: Path, options: Options) -> tuple[list[Film], list]:
    """The frontal films of train.csv and valid.csv (the test split), and no boxes."""
    folder = next((root / f for f in FOLDERS if (root / f / "train.csv").is_file()), None)
    if folder is None:
        raise UserError(f"--data-root {root}: no {FOLDERS[0]}/train.csv there. {SOURCE}")
    films = _films(folder / "train.csv", options.uncertain, None)
    if (folder / "valid.csv").is_file():
        films += _films(folder / "valid.csv", options.uncertain, "test")
    else:
        print(f"note: no {folder / 'valid.csv'}: the test split is drawn from train.csv's patients instead")
    return films, []


def _films(path: Path, uncertain: str, split: str | None) -> list[Film]:
    header, records = read_table(path, ("Path", "Frontal/Lateral"))
    missing = [f for f in FINDINGS if f not in header]
    if missing:
        raise UserError(f"{path}: no column {missing[0]!r}; is this CheXpert's {path.name}?")
    films, lateral = [], 0
    for line_no, row in records:
        if row["Frontal/Lateral"].strip() != "Frontal":
            lateral += 1
            continue
        image = row["Path"].strip()
        values = {f: _value(row[f], f"{path} line {line_no}") for f in FINDINGS}
        pos = tuple(f for f, v in values.items() if v == 1 or (v == -1 and uncertain == "ones"))
        unk = tuple(f for f, v in values.items() if v == -1 and uncertain == "ignore")
        films.append(Film(image, pos, unk, _patient(image), split))
    print(f"{path}: {len(films):,} frontal films; {lateral:,} lateral ones left out")
    return films


def _value(text: str, where: str) -> int:
    text = text.strip()
    if text in ("", "0", "0.0"):
        return 0
    if text in ("1", "1.0"):
        return 1
    if text in ("-1", "-1.0"):
        return -1
    raise UserError(f"{where}: label {text[:20]!r}; CheXpert's are 1, 0, -1 or blank")


def _patient(image: str) -> str:
    """'CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg' -> 'patient00001'."""
    return next((p for p in Path(image).parts if p.startswith("patient")), image)
