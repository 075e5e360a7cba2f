"""A decoded-image cache: every image of some CSVs decoded once, converted to one channel, resized
(antialiased) to --size and stored as rows of one uint8 memory-mapped array.

    roi-consistency cache --csv nih_roi_train.csv --csv nih_roi_val.csv --csv nih_roi_test.csv \
        --image-root images --size 256 --out cache256

Decoding a 1024-px NIH PNG costs milliseconds of CPU; reading a cached row costs microseconds, so the
loader stops being the bottleneck. Layout of OUT:
- images.u8   raw uint8 array [N, size, size] (numpy memmap)
- sizes.u32   each source file's own (width, height), [N, 2]: box coordinates refer to it
- done.u8     one byte per row, 1 once that row is written and flushed (what makes a build resumable)
- index.json  names (row order), size, source folder, and "complete": true only after every row is done
A reader refuses a cache whose index does not say complete, so an interrupted build never passes
for a finished one.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from roi_consistency.atomic import write_json
from roi_consistency.data import decode_image, read_label_csv
from roi_consistency.errors import UserError
from roi_consistency.labels import FINDINGS

CHUNK = 64  # rows per task: large enough to amortise process overhead, small enough to resume cheaply


def _fill_rows(out: str, n: int, size: int, root: str, rows: list[tuple[int, str]]):
    """Worker: decode rows into the memmap and flush. Returns (done row ids, [(name, error)])."""
    arr = np.memmap(Path(out) / "images.u8", dtype=np.uint8, mode="r+", shape=(n, size, size))
    sizes = np.memmap(Path(out) / "sizes.u32", dtype=np.uint32, mode="r+", shape=(n, 2))
    done, bad = [], []
    for i, name in rows:
        try:
            img, sizes[i] = decode_image(Path(root) / name, size)
            arr[i] = img[0].numpy()
            done.append(i)
        except UserError as exc:
            bad.append((name, str(exc)))
    arr.flush()
    sizes.flush()
    return done, bad


def build_cache(csvs: list[str], image_root: str, size: int, out: str, workers: int | None = None,
                progress: bool = True) -> dict:
    """Build (or finish) the cache; returns its index. Corrupt or missing images are named in a UserError."""
    names = sorted({n for c in csvs for n in read_label_csv(c, list(FINDINGS))[0]})
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / "index.json"
    index = {"names": names, "size": size, "source": str(Path(image_root).resolve()), "complete": False}
    n = len(names)
    old = json.loads(index_path.read_text()) if index_path.is_file() else None
    # different images or size, or a cache from before source sizes were recorded: start over
    fresh = (not old or old.get("names") != names or old.get("size") != size
             or not (out_dir / "sizes.u32").is_file())
    if fresh:
        for f in ("images.u8", "sizes.u32", "done.u8"):
            (out_dir / f).unlink(missing_ok=True)
        write_json(index_path, index, indent=None)
        np.memmap(out_dir / "images.u8", dtype=np.uint8, mode="w+", shape=(n, size, size)).flush()
        np.memmap(out_dir / "sizes.u32", dtype=np.uint32, mode="w+", shape=(n, 2)).flush()
        np.memmap(out_dir / "done.u8", dtype=np.uint8, mode="w+", shape=(n,)).flush()
    elif old.get("complete"):
        return old
    done = np.memmap(out_dir / "done.u8", dtype=np.uint8, mode="r+", shape=(n,))
    todo = [(i, names[i]) for i in np.flatnonzero(done == 0).tolist()]
    chunks = [todo[k:k + CHUNK] for k in range(0, len(todo), CHUNK)]
    bad: list[tuple[str, str]] = []
    workers = workers or os.cpu_count() or 1
    with tqdm(total=n, initial=n - len(todo), desc="cache", unit="img", disable=not progress) as bar, \
            ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_fill_rows, str(out_dir), n, size, image_root, c) for c in chunks]
        try:
            for fut in futures:
                ok, errs = fut.result()
                done[ok] = 1  # marked only after the worker flushed those rows
                done.flush()
                bad.extend(errs)
                bar.update(len(ok) + len(errs))
        except BaseException:  # Ctrl+C: keep what is marked done, drop the queue, resume next time
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    if bad:
        listing = "\n  ".join(f"{name}: {err}" for name, err in bad[:10])
        raise UserError(f"{len(bad)} images could not be read; the cache is left incomplete (fix or remove "
                        f"them from the CSVs, then run cache again):\n  {listing}")
    index["complete"] = True
    write_json(index_path, index, indent=None)
    return index


class ImageCache:
    """Read side: name -> uint8 [1, size, size] tensor from the memmap (opened lazily, per process)."""

    def __init__(self, path: str | Path, img_size: int | None = None):
        self.path = Path(path)
        index_path = self.path / "index.json"
        if not index_path.is_file():
            raise UserError(f"--cache {path}: no index.json; build it with `roi-consistency cache`")
        index = json.loads(index_path.read_text())
        if not index.get("complete"):
            raise UserError(f"--cache {path}: the cache is incomplete (an interrupted build); run "
                            "`roi-consistency cache` again with the same arguments to finish it")
        self.size, self.names = index["size"], index["names"]
        if img_size is not None and img_size > self.size:
            raise UserError(f"--cache {path} holds {self.size}-px images but --img-size is {img_size}: that "
                            f"would upsample. Rebuild the cache with --size {img_size} or more.")
        self.row = {n: i for i, n in enumerate(self.names)}
        sizes = self.path / "sizes.u32"  # absent in caches built before it was recorded
        self.sizes = np.fromfile(sizes, dtype=np.uint32).reshape(-1, 2) if sizes.is_file() else None
        self._arr = None

    def source_size(self, name: str) -> tuple[int, int] | None:
        """The (width, height) of the file a cached image came from (None: not recorded)."""
        i = self.row.get(name)
        return None if self.sizes is None or i is None else (int(self.sizes[i, 0]), int(self.sizes[i, 1]))

    def get(self, name: str):
        import torch
        if self._arr is None:  # opened in the worker process, not pickled across
            self._arr = np.memmap(self.path / "images.u8", dtype=np.uint8, mode="r",
                                  shape=(len(self.names), self.size, self.size))
        i = self.row.get(name)
        if i is None:
            raise UserError(f"--cache {self.path}: image {name} is not in the cache; rebuild it with this CSV")
        return torch.from_numpy(np.array(self._arr[i])).unsqueeze(0)

    def __getstate__(self):
        return {**self.__dict__, "_arr": None}
