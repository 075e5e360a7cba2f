"""What every dataset's make-csv shares: a film list, its split, and the CSVs.

Each dataset module reads its own metadata into Films (image paths relative to --data-root), then
`write_dataset` splits them, checks that the images exist, writes NAME_{train,val,test}.csv and
returns the summary that make-csv prints. Where a dataset has an official labelled test split it is
kept; otherwise test and validation patients are drawn (seeded), image by image where a dataset has
no patient ids.
"""
from __future__ import annotations

import csv
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from roi_consistency.errors import UserError
from roi_consistency.files.atomic import atomic_write
from roi_consistency.files.text import read_table

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Film:
    image: str  # relative to --data-root
    findings: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    patient: str | None = None  # None: each film its own patient
    split: str | None = None  # the dataset's official split, where it has one


@dataclass(frozen=True)
class Box:
    image: str
    finding: str
    x: float
    y: float
    w: float
    h: float
    reader: str = ""  # who drew it, where a dataset says


@dataclass(frozen=True)
class Options:
    """What make-csv's flags tell a dataset's reader."""
    uncertain: str = "ignore"  # CheXpert's -1: ignore (unknown), zeros or ones
    out_dir: str | None = None  # where the CSVs go: SIIM writes its masks beside them


def metadata(root: Path, name: str, columns: tuple[str, ...], source: str, **read) -> tuple[Path, Iterator]:
    """A dataset's label file under --data-root and its rows (files.text.read_table); a missing one is an
    error saying where to get the dataset."""
    path = root / name
    if not path.is_file():
        raise UserError(f"--data-root {root}: no {name} there. {source}")
    return path, read_table(path, columns, **read)[1]


def split_films(films: list[Film], val_fraction: float, test_fraction: float, seed: int
                ) -> tuple[dict[str, list[Film]], str]:
    """{split: films} and how it was made. Official splits are kept; the rest is drawn by patient (seeded),
    so no patient is in two splits."""
    official = {f.split for f in films} - {None}
    groups: dict[str, list[Film]] = {}
    for f in films:
        groups.setdefault(f.patient or f.image, []).append(f)
    mixed = next((p for p, fs in groups.items() if len({f.split for f in fs}) > 1), None)
    if mixed is not None:
        raise UserError(f"patient {mixed} has films in two splits of the dataset's own (or in one and outside it); "
                        "the split must be patient-wise")
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    free = [k for k in keys if groups[k][0].split is None]
    test = set(free[:round(test_fraction * len(free))]) if "test" not in official else set()
    rest = [k for k in free if k not in test]
    val = set(rest[:round(val_fraction * len(rest))]) if "val" not in official else set()
    out: dict[str, list[Film]] = {s: [] for s in SPLITS}
    for k in sorted(groups):
        split = groups[k][0].split or ("test" if k in test else "val" if k in val else "train")
        out[split] += groups[k]
    for split, empty in (("train", not out["train"] and free), ("test", not out["test"] and test_fraction > 0)):
        if empty:
            print(f"warning: the {split} split is empty (--test-fraction {test_fraction}, --val-fraction "
                  f"{val_fraction}, {len(keys):,} patients or films)", file=sys.stderr)
    unit = "patient" if any(f.patient for f in films) else "image"
    drawn = [s for s in ("test", "val") if s not in official]
    how = [f"{' and '.join(s for s in SPLITS if s in official)} official" if official else "",
           f"{' and '.join(drawn)} drawn {unit}-wise (seed {seed})" if drawn else ""]
    return out, "; ".join(h for h in how if h)


def present(films: list[Film], root: Path, skip_missing: bool) -> list[Film]:
    """The films whose image exists under root: a missing one is an error naming the first, or with
    skip_missing a warning."""
    outside = next((f.image for f in films if Path(f.image).is_absolute() or ".." in Path(f.image).parts), None)
    if outside:
        raise UserError(f"the metadata names image {outside[:80]!r}, outside --data-root {root}")
    missing = [f.image for f in films if not (root / f.image).is_file()]
    if missing:
        msg = f"{len(missing):,} of {len(films):,} images are missing under --data-root {root}"
        if not skip_missing:
            raise UserError(f"{msg}, e.g. {missing[0]}; check --data-root, or pass --skip-missing to leave them out")
        print(f"warning: {msg}; leaving them out (--skip-missing)", file=sys.stderr)
        gone = set(missing)
        films = [f for f in films if f.image not in gone]
    return films


def write_csv(path: Path, films: list[Film]) -> None:
    """`image,labels[,unknown]`, written atomically."""
    with_unknown = any(f.unknown for f in films)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "labels"] + (["unknown"] if with_unknown else []))
            for f in films:
                unknown = ["|".join(f.unknown)] if with_unknown else []
                w.writerow([f.image, "|".join(f.findings) or "Normal"] + unknown)
    atomic_write(path, write)


def write_boxes(path: Path, boxes: list[Box]) -> None:
    """NIH's box format (`Image Index,Finding Label,x,y,w,h`) with a reader column, written atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["Image Index", "Finding Label", "x", "y", "w", "h", "reader"])
            w.writerows([b.image, b.finding, f"{b.x:g}", f"{b.y:g}", f"{b.w:g}", f"{b.h:g}", b.reader] for b in boxes)
    atomic_write(path, write)


def summary(splits: dict[str, list[Film]], findings: tuple[str, ...], how: str) -> dict:
    """Rows, patients, normal films, and positives and unknowns per finding for each split (JSON-ready)."""
    out: dict = {"split": how}
    for split, films in splits.items():
        pos, unk = Counter(n for f in films for n in f.findings), Counter(n for f in films for n in f.unknown)
        out[split] = {"rows": len(films), "patients": len({f.patient or f.image for f in films}),
                      "normal": sum(1 for f in films if not f.findings and not f.unknown),
                      "positives": {n: pos.get(n, 0) for n in findings},
                      "unknown": {n: unk.get(n, 0) for n in findings}}
    return out


def write_dataset(name: str, films: list[Film], boxes: list[Box], data_root: str, out_dir: str, val_fraction: float,
                  test_fraction: float, seed: int, skip_missing: bool) -> dict:
    """Split the films, check their images, write NAME_{train,val,test}.csv (and NAME_boxes.csv) into
    out_dir; the summary."""
    if not films:
        raise UserError(f"--data-root {data_root}: the {name} metadata lists no films")
    films = present(films, Path(data_root), skip_missing)
    splits, how = split_films(films, val_fraction, test_fraction, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_csv(out / f"{name}_{split}.csv", splits[split])
    kept = {f.image for f in films}
    boxes = [b for b in boxes if b.image in kept]
    if boxes:
        write_boxes(out / f"{name}_boxes.csv", boxes)
    found = Counter(n for f in films for n in f.findings + f.unknown)
    findings = tuple(sorted(found, key=lambda n: (-found[n], n)))  # the most frequent first
    return {**summary(splits, findings, how), "boxes": len(boxes), "boxed_films": len({b.image for b in boxes})}


def format_summary(name: str, summary: dict, top: int = 30) -> str:
    """The table make-csv prints: rows, patients, normal films, and for the `top` most frequent findings their
    positives (and, in brackets, unknowns) in each split."""
    findings = list(summary["train"]["positives"])
    width = max(20, *map(len, findings[:top])) + 1
    lines = [f"{name}: {summary['split']}", f"{'':{width}s}" + "".join(f"{s:>16s}" for s in SPLITS)]
    for key in ("rows", "patients", "normal"):
        lines.append(f"{key:{width}s}" + "".join(f"{summary[s][key]:>16,d}" for s in SPLITS))
    for f in findings[:top]:
        cells = [f"{summary[s]['positives'][f]:,}" + (f" ({summary[s]['unknown'][f]:,})" if summary[s]["unknown"][f]
                                                       else "") for s in SPLITS]
        lines.append(f"{f:{width}s}" + "".join(f"{c:>16s}" for c in cells))
    if len(findings) > top:
        lines.append(f"… and {len(findings) - top} findings more")
    if summary["boxes"]:
        lines.append(f"boxes: {summary['boxes']:,} on {summary['boxed_films']:,} films ({name}_boxes.csv)")
    return "\n".join(lines)
