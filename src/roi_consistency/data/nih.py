"""Getting NIH ChestX-ray14 ready: download (kagglehub), unify (flatten the shards into one folder of
symlinks) and make-csv (the official patient-wise split into `image,labels` CSVs).

    roi-consistency download --dest data/nih
    roi-consistency unify --data-root data/nih
    roi-consistency make-csv --data-root data/nih --out-dir data

The CSV building is pure (`read_data_entry`, `build_splits`) so it can be tested without files.
"""
from __future__ import annotations

import csv
import glob
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from roi_consistency.data.kaggle import fetch
from roi_consistency.data.labels import FINDINGS, LabelError, format_labels, parse_labels
from roi_consistency.errors import UserError
from roi_consistency.files.atomic import atomic_write
from roi_consistency.files.text import csv_rows, read_text, shown

KAGGLE_DATASET = "nih-chest-xrays/data"
DATA_ENTRY_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------------------- download

HINT = ("If you already have a copy (the folder holding Data_Entry_2017.csv and images_001/ …), skip this step "
        "and pass it to the next stages:\n"
        "  roi-consistency unify --data-root /path/to/nih\n"
        "  roi-consistency make-csv --data-root /path/to/nih\n"
        "To try the pipeline without the data, run ./run_all.sh --demo (built-in phantom set).")


def download(dest: str | None = None, copy: bool = False) -> Path:
    """Fetch the dataset with kagglehub and return its folder (with `dest`, also linked or copied there:
    about 42 GB)."""
    return fetch("dataset", KAGGLE_DATASET, "NIH ChestX-ray14", HINT, dest, copy)


# -------------------------------------------------------------------------------------------- unify

@dataclass
class UnifyStats:
    total: int = 0
    created: int = 0
    repaired: int = 0
    unchanged: int = 0


def _same_file(a: str, b: str) -> bool:
    import filecmp
    return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)


def unify(data_root: str, out: str | None = None, progress: bool = True) -> UnifyStats:
    """Symlink every DATA_ROOT/images_*/images/*.png (or *.dcm: a DICOM phantom) into one flat folder
    (default DATA_ROOT/images).

    Idempotent: links already pointing at the right file are left alone; missing, broken or stale
    links are (re)made atomically. Two different files with the same name are an error."""
    root = Path(data_root).resolve()
    if not root.is_dir():
        raise UserError(f"--data-root {data_root}: no such folder")
    out_dir = Path(out) if out else root / "images"
    sources: dict[str, str] = {}
    shards = sorted(glob.glob(str(root / "images_*" / "images")))
    if not shards:
        raise UserError(f"--data-root {data_root}: no images_*/images/ shard folders found; "
                        "is this the NIH ChestX-ray14 folder (it holds Data_Entry_2017.csv)?")
    for shard in shards:
        with os.scandir(shard) as it:
            for entry in it:
                if not entry.name.endswith((".png", ".dcm")):
                    continue
                prev = sources.get(entry.name)
                if prev is not None and not _same_file(prev, entry.path):
                    raise UserError(f"two different files share the name {entry.name}:\n  {prev}\n  "
                                    f"{entry.path}\nremove or rename one of them, then run unify again")
                sources.setdefault(entry.name, entry.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = {}
    with os.scandir(out_dir) as it:
        for entry in it:
            existing[entry.name] = entry
    stats = UnifyStats(total=len(sources))
    for name, src in tqdm(sorted(sources.items()), desc="unify", unit="img", disable=not progress,
                          mininterval=0.5):
        link = out_dir / name
        entry = existing.get(name)
        if entry is not None:
            if not entry.is_symlink():
                stats.unchanged += 1  # a real file the user put there: never overwrite data
                continue
            if os.readlink(link) == src and os.path.exists(src):
                stats.unchanged += 1
                continue
        atomic_write(link, lambda tmp, src=src: os.symlink(src, tmp))  # a reader never sees a missing link
        if entry is None:
            stats.created += 1
        else:
            stats.repaired += 1
    return stats


# ----------------------------------------------------------------------------------------- make-csv

@dataclass(frozen=True)
class Entry:
    image: str
    findings: tuple[str, ...]
    patient: str


def find_data_entry(data_root: str | Path) -> Path:
    for name in DATA_ENTRY_NAMES:
        p = Path(data_root) / name
        if p.is_file():
            return p
    raise UserError(f"--data-root {data_root}: no {' or '.join(DATA_ENTRY_NAMES)} found there")


def read_data_entry(path: str | Path) -> list[Entry]:
    """Parse Data_Entry_2017.csv, with or without the 2017 file's trailing comma.

    Columns are found by header name, so the extra empty column a trailing comma makes is ignored."""
    rows = csv_rows(path, "metadata CSV")
    header = [h.strip() for h in next(rows, (1, []))[1]]
    try:
        i_img, i_lab, i_pat = (header.index(c) for c in ("Image Index", "Finding Labels", "Patient ID"))
    except ValueError:
        raise UserError(f"{path}: header must contain 'Image Index', 'Finding Labels' and "
                        f"'Patient ID'; found {header}") from None
    need = max(i_img, i_lab, i_pat)
    entries, seen = [], set()
    for line_no, row in rows:
        if len(row) <= need:
            raise UserError(f"{path} line {line_no}: expected at least {need + 1} columns, got {len(row)}")
        image = row[i_img].strip()
        try:
            findings = tuple(parse_labels(row[i_lab]))
        except LabelError as exc:
            raise UserError(f"{path} line {line_no} ({shown(image)}): {exc}") from None
        if image in seen:
            raise UserError(f"{path} line {line_no}: image {shown(image)} is listed twice")
        seen.add(image)
        entries.append(Entry(image, findings, row[i_pat].strip()))
    return entries


def read_list(path: str | Path) -> list[str]:
    if not Path(path).is_file():
        raise UserError(f"{path}: split list not found (NIH ships train_val_list.txt and test_list.txt "
                        "beside Data_Entry_2017.csv)")
    return [line.strip() for line in read_text(path, "split list").splitlines() if line.strip()]


def build_splits(entries: list[Entry], train_val: list[str], test: list[str],
                 val_fraction: float = 0.1, seed: int = 0) -> dict[str, list[Entry]]:
    """Official test split as given; train/val split of `train_val` by patient.

    Raises UserError when the lists name unknown images, overlap, or share a patient: any of those
    would let a test patient reach training."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    by_name = {e.image: e for e in entries}
    test_set, tv_set = set(test), set(train_val)
    for list_name, names in (("test_list.txt", test_set), ("train_val_list.txt", tv_set)):
        unknown = sorted(names - by_name.keys())
        if unknown:
            raise UserError(f"{list_name}: {len(unknown)} images are not in Data_Entry_2017.csv, "
                            f"e.g. {', '.join(unknown[:3])}")
    both = sorted(test_set & tv_set)
    if both:
        raise UserError(f"{len(both)} images are in both test_list.txt and train_val_list.txt, "
                        f"e.g. {', '.join(both[:3])}")
    test_patients = {by_name[n].patient for n in test_set}
    tv_patients = sorted({by_name[n].patient for n in tv_set})
    shared = sorted(test_patients.intersection(tv_patients))
    if shared:
        raise UserError(f"{len(shared)} patients have images in both the test and train_val lists "
                        f"(e.g. patient {shared[0]}); the split must be patient-wise")
    rng = random.Random(seed)
    shuffled = tv_patients[:]
    rng.shuffle(shuffled)
    val_patients = set(shuffled[:round(val_fraction * len(shuffled))])
    splits: dict[str, list[Entry]] = {s: [] for s in SPLITS}
    for name in sorted(tv_set):
        e = by_name[name]
        splits["val" if e.patient in val_patients else "train"].append(e)
    splits["test"] = [by_name[n] for n in sorted(test_set)]
    return splits


def split_summary(splits: dict[str, list[Entry]]) -> dict[str, dict]:
    """Rows, patients and positives per finding for each split (plain dict, JSON-ready)."""
    out = {}
    for split, rows in splits.items():
        counts = Counter(f for e in rows for f in e.findings)
        out[split] = {"rows": len(rows), "patients": len({e.patient for e in rows}),
                      "normal": sum(1 for e in rows if not e.findings),
                      "positives": {f: counts.get(f, 0) for f in FINDINGS}}
    return out


def format_summary(summary: dict[str, dict]) -> str:
    splits = list(summary)
    lines = [f"{'':20s}" + "".join(f"{s:>10s}" for s in splits)]
    for key in ("rows", "patients", "normal"):
        lines.append(f"{key:20s}" + "".join(f"{summary[s][key]:>10d}" for s in splits))
    for f in FINDINGS:
        lines.append(f"{f:20s}" + "".join(f"{summary[s]['positives'][f]:>10d}" for s in splits))
    tv = summary.get("train", {}).get("rows", 0) + summary.get("val", {}).get("rows", 0)
    lines.append(f"train+val {tv} / test {summary.get('test', {}).get('rows', 0)}")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[Entry]) -> None:
    """Write `image,labels` atomically: a crash never leaves a half-written CSV behind."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "labels"])
            for e in rows:
                w.writerow([e.image, format_labels(e.findings)])
    atomic_write(path, write)


def make_csv(data_root: str, image_root: str | None = None, out_dir: str = ".",
             val_fraction: float = 0.1, seed: int = 0, skip_missing: bool = False) -> dict[str, dict]:
    """Write nih_roi_{train,val,test}.csv into `out_dir` and return the split summary."""
    root = Path(data_root)
    entries = read_data_entry(find_data_entry(root))
    splits = build_splits(entries, read_list(root / "train_val_list.txt"),
                          read_list(root / "test_list.txt"), val_fraction, seed)
    img_root = Path(image_root) if image_root else root / "images"
    if not img_root.is_dir():
        raise UserError(f"image folder {img_root} not found; run `roi-consistency unify --data-root "
                        f"{data_root}` first, or pass --image-root")
    with os.scandir(img_root) as it:
        present = {e.name for e in it if e.is_file()}  # is_file follows symlinks: broken links miss
    missing = sorted(e.image for rows in splits.values() for e in rows if e.image not in present)
    if missing:
        msg = f"{len(missing)} images listed in the split are missing from {img_root}"
        if not skip_missing:
            raise UserError(f"{msg}, e.g. {', '.join(missing[:5])}; run unify again, or pass "
                            "--skip-missing to leave those rows out")
        print(f"warning: {msg}; leaving them out (--skip-missing)", file=sys.stderr)
        gone = set(missing)
        splits = {s: [e for e in rows if e.image not in gone] for s, rows in splits.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_csv(out / f"nih_roi_{split}.csv", splits[split])
    return split_summary(splits)
