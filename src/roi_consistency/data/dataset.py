"""`image,labels` CSVs -> tensors: one-channel images in [0, 1] resized to img_size, multi-hot labels,
and the sampler that makes a run's batches the same on resume.
"""
from __future__ import annotations

import copy
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset, DistributedSampler, Sampler

from roi_consistency.data.augment import aug_params, augment, augment_batch
from roi_consistency.data.images import load_image
from roi_consistency.data.labels import LabelError, split_labels
from roi_consistency.data.preflight import preflight
from roi_consistency.data.vocabulary import Match, columns, match
from roi_consistency.errors import UserError
from roi_consistency.files.text import read_table

MIX = 0x9E3779B1  # spreads (seed, epoch, index) into well-separated generator seeds


def image_name(text: str | None, csv_path: Path, line_no: int) -> str:
    """A CSV's image name, which must stay inside the image root: no absolute path, no '..'."""
    name = (text or "").strip()
    if not name:
        raise UserError(f"{csv_path} line {line_no}: empty image name")
    if not name.isprintable():  # a line break, tab, NUL or other control character
        raise UserError(f"{csv_path} line {line_no}: image {name[:60]!r} holds a line break, tab or control "
                        "character; a quote left open?")
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise UserError(f"{csv_path} line {line_no}: image {name!r} leaves --image-root; image names must be "
                        "paths inside it, without '..' or a leading '/'")
    return name


def read_label_csv(path: str | Path, classes: list[str], join: bool = False
                   ) -> tuple[list[str], np.ndarray | None, Match | None]:
    """Image names, a float32 label matrix over `classes` (None when the CSV has no labels column) and how
    the CSV's finding names were read as the classes (vocabulary.match; None: as they are). A label is 1 for
    a finding in the labels column, NaN for one in the optional unknown column or one the CSV of another
    vocabulary never names, else 0. With `join`, a CSV finding the model scores in parts (match.joined) gets
    a column after the classes. A film listed more than once is kept as listed (each listing is scored),
    with a warning."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: CSV not found (make one with `roi-consistency make-csv`)")
    header, records = read_table(path, ("image",))
    names, rows = [], []
    for line_no, row in records:
        names.append(image_name(row["image"], path, line_no))
        if "labels" in header:
            rows.append(split_row(row, f"{path} line {line_no}"))
    if not names:
        raise UserError(f"{path}: no rows")
    warn_repeated(names, path)
    if "labels" not in header:
        return names, None, None
    m = match(classes, list(dict.fromkeys(n for positive, unknown in rows for n in positive + unknown)), join)
    classes = columns(classes, m)
    read_into: dict[str, list[int]] = {}  # a CSV name -> the columns it is read as
    for j, c in enumerate(classes):
        for n in m.reads.get(c, [c] if c in m.joined else []) if m else (c,):
            read_into.setdefault(n, []).append(j)
    labels = np.zeros((len(rows), len(classes)), np.float32)
    labels[:, [classes.index(c) for c in (m.unlabelled if m else ())]] = np.nan
    for i, (positive, unknown) in enumerate(rows):
        for n in unknown:
            labels[i, read_into.get(n, [])] = np.nan
        for n in positive:  # after: a Nodule/Mass column is positive where either part is, whatever the other
            labels[i, read_into.get(n, [])] = 1.0
    return names, labels, m


def split_row(row: dict[str, str], where: str) -> tuple[list[str], list[str]]:
    """A film's findings: those in its labels column, and those in its unknown column."""
    try:
        positive, unknown = split_labels(row["labels"]), split_labels(row.get("unknown"))
    except LabelError as exc:
        raise UserError(f"{where}: {exc}") from None
    both = set(positive) & set(unknown)
    if both:
        raise UserError(f"{where}: {sorted(both)[0]!r} is in both the labels and the unknown column; keep it in one")
    return positive, unknown


def dataset_name(csv_path: str | Path) -> str | None:
    """The dataset a CSV of make-csv's holds, by its name: nih_roi_test.csv -> nih, vindr_test.csv -> vindr
    (None for a CSV named otherwise)."""
    stem, _, split = Path(csv_path).stem.rpartition("_")
    if not stem or split not in ("train", "val", "test"):
        return None
    return "nih" if stem == "nih_roi" else stem


def warn_repeated(names: list[str], path: Path) -> None:
    counts = Counter(names)
    repeated = [n for n, k in counts.items() if k > 1]
    if repeated:
        print(f"warning: {path}: {len(repeated)} image(s) listed more than once (e.g. {repeated[0]}, "
              f"{counts[repeated[0]]} times); each listing is used as a row of its own", file=sys.stderr)


def good_rows(batch, names: list[str], skipped: list[str]):
    """A scoring batch (x, y, idx) without the items marked bad mid-run (idx < 0), whose names are added
    to `skipped`."""
    x, y, idx = batch
    bad = idx < 0
    if not bad.any():
        return x, y, idx
    skipped += [names[-1 - i] for i in idx[bad].tolist()]
    return x[~bad], y[~bad], idx[~bad]


def to_input(x, device: torch.device, size: int) -> torch.Tensor:
    """A loader batch as model input on `device`, at `size` px, channels-last. Raw cached rows, (uint8 images,
    augmentation parameters), are copied as bytes and resized and augmented there (`augment_batch`)."""
    if isinstance(x, (list, tuple)):
        img, u = x  # the parameters stay on the host, where the affine matrices are built
        x = augment_batch(img.to(device, non_blocking=True), u, size)
    else:
        x = x.to(device, non_blocking=True)
        if x.shape[-1] != size:  # a progressive-resizing epoch: the workers' fixed size, resized again
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.to(memory_format=torch.channels_last)


class ImageCSVDataset(Dataset):
    """Items are (image float [1,S,S] in [0,1], label vector, row index). Indices may be plain ints
    or (index, seed) pairs from SeededSampler; a seed switches augmentation on."""

    def __init__(self, csv_path: str | Path, image_root: str | Path, img_size: int, classes: list[str],
                 augment: bool = False, cache=None, raw: bool = False, join: bool = False):
        self.csv_path, (self.names, labels, self.match) = Path(csv_path), read_label_csv(csv_path, classes, join)
        self.classes = columns(classes, self.match)  # join: see read_label_csv
        if self.match:  # another dataset's names: say how they were read
            print(f"{csv_path}: findings {self.match.describe()}", file=sys.stderr)
        self.cache = cache  # an ImageCache: decoded rows instead of PNG files
        if cache is not None:
            missing = [n for n in self.names if n not in cache.row]
            if missing:
                raise UserError(f"--cache {cache.path}: {len(missing)} images of {csv_path} are not in the cache "
                                f"(e.g. {missing[0]}); rebuild it with this CSV among its --csv files")
        self.labels = labels if labels is not None else np.zeros((len(self.names), len(self.classes)), np.float32)
        self.has_labels = labels is not None
        self.root, self.size, self.augment = Path(image_root), img_size, augment
        # raw: items carry the cached uint8 row and its augmentation parameters, (image, u), and
        # `augment_batch` resizes and augments the whole batch on the device (a quarter of the bytes to
        # copy, and no per-image resampling in the loader workers).
        if raw and cache is None:
            raise ValueError("raw items need a cache")
        self.raw = raw
        # a bad image read mid-run: stop (default); with skip_bad, leave it out: replaced by the next
        # image while training (replace_bad), marked for infer and evaluate
        self.skip_bad, self.replace_bad = False, False

    def without(self, names: set[str]) -> "ImageCSVDataset":
        """The same rows but those images (a pre-flight check's bad ones), in place."""
        if names:
            keep = [i for i, n in enumerate(self.names) if n not in names]
            self.names, self.labels = [self.names[i] for i in keep], self.labels[keep]
        return self

    def plain(self) -> "ImageCSVDataset":
        """A view of the same rows without augmentation, as finished float images."""
        view = copy.copy(self)
        view.augment, view.raw = False, False
        return view

    def drop_bad(self, skip_bad: bool, progress: bool = True) -> list[str]:
        """The pre-flight check of its images (a cache checked its own when it was built): an error naming
        the bad ones, or with skip_bad their rows left out and their names returned."""
        if self.cache is not None:
            return []
        bad = preflight(self.names, self.root, str(self.csv_path), skip_bad, progress)
        self.without(bad)
        self.skip_bad = skip_bad
        return sorted(bad)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, None)
        try:
            return self._item(i, seed)
        except UserError as exc:  # a file that passed the pre-flight check but does not decode
            return self._bad(i, seed, exc)

    def _item(self, i: int, seed):
        if self.raw:
            u = aug_params(seed) if self.augment and seed is not None else [math.nan] * 5
            return (self.cache.get(self.names[i]), torch.tensor(u)), torch.from_numpy(self.labels[i]), i
        if self.cache is not None:
            img = self.cache.get(self.names[i])
            if img.shape[-1] != self.size:  # the cache may be stored larger than the model input
                img = TF.resize(img, [self.size, self.size], antialias=True)
        else:
            img = load_image(self.root / self.names[i], self.size)
        if self.augment and seed is not None:
            img = augment(img, seed)
        return img.float().div_(255.0), torch.from_numpy(self.labels[i]), i

    def _bad(self, i: int, seed, exc: UserError):
        """A bad image read mid-run: raise (by default), or with skip_bad log its name and either mark the
        item (index -1 - i, for infer and evaluate to leave out) or, for training, use the next good image
        in its place, so every batch keeps its size and DDP ranks stay in step."""
        if not self.skip_bad:
            raise exc
        for step in range(1, 11):
            print(f"warning: skipping bad image {self.names[(i + step - 1) % len(self.names)]} ({exc}) "
                  "(--skip-bad-images)", file=sys.stderr)
            if not self.replace_bad:
                return torch.zeros(1, self.size, self.size), torch.from_numpy(self.labels[i]), -1 - i
            try:
                return self._item((i + step) % len(self.names), seed)
            except UserError as again:
                exc = again
        raise UserError(f"{self.csv_path}: 10 bad images in a row after {self.names[i]}; fix or remove them")


class SeededSampler(Sampler):
    """A DistributedSampler (one replica when not distributed) that yields (index, seed) pairs and
    can start part-way through an epoch, so a resumed run skips what it already trained on."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        self.inner = DistributedSampler(range(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                        seed=seed, drop_last=False)
        self.seed, self.epoch, self.start = seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __iter__(self):
        for pos, i in enumerate(self.inner):
            if pos >= self.start:
                yield i, (self.seed * 1_000_003 + self.epoch * MIX + i) % (2**63)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


def normal_mean_image(ds: "ImageCSVDataset", limit: int = 2000, workers: int = 0) -> torch.Tensor:
    """The pixel-wise mean of up to `limit` images with no finding (the method's fill): what a chest
    without findings looks like at each place, to put where a region is removed."""
    from torch.utils.data import DataLoader, Subset
    normal = ~(ds.labels > 0.5).any(axis=1)  # no finding; those with none unknown either, where there are any
    certain = normal & ~np.isnan(ds.labels).any(axis=1)
    rows = np.flatnonzero(certain if certain.any() else normal)[:limit].tolist()
    if not rows:
        raise UserError(f"{ds.csv_path}: no image without findings (Normal); the method fills removed pixels "
                        "with the mean normal image, so the training CSV needs some")
    total = torch.zeros(1, ds.size, ds.size, dtype=torch.float64)
    for x, _, _ in DataLoader(Subset(ds, rows), batch_size=64, num_workers=workers):
        total += x.double().sum(dim=0)
    return (total / len(rows)).float()
