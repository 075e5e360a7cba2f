"""A decoded-image cache: every image of some CSVs decoded once, converted to one channel, resized
(antialiased) to --size and stored as rows of one uint8 memory-mapped array.

    roi-consistency cache --csv nih_roi_train.csv --csv nih_roi_val.csv --csv nih_roi_test.csv \
        --image-root images --size 256 --out cache256

Decoding a 1024-px NIH PNG costs milliseconds of CPU; reading a cached row costs microseconds, so the
loader stops being the bottleneck. The folder's layout, and reading it (`ImageCache`): images.py.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from roi_consistency.data.dataset import read_label_csv
from roi_consistency.data.images import DONE, IMAGES, INDEX, SIZES, decode_image
from roi_consistency.errors import UserError
from roi_consistency.files.atomic import write_json

CHUNK = 64  # rows per task: large enough to amortise process overhead, small enough to resume cheaply


def _fill_rows(out: str, n: int, size: int, root: str, rows: list[tuple[int, str]]):
    """Worker: decode rows into the memmap and flush. Returns (done row ids, [(name, error)])."""
    arr = np.memmap(Path(out) / IMAGES, dtype=np.uint8, mode="r+", shape=(n, size, size))
    sizes = np.memmap(Path(out) / SIZES, dtype=np.uint32, mode="r+", shape=(n, 2))
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
    names = sorted({n for c in csvs for n in read_label_csv(c, [])[0]})
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / INDEX
    index = {"names": names, "size": size, "source": str(Path(image_root).resolve()), "complete": False}
    n = len(names)
    old = json.loads(index_path.read_text()) if index_path.is_file() else None
    # different images or size, or a cache from before source sizes were recorded: start over
    fresh = (not old or old.get("names") != names or old.get("size") != size
             or not (out_dir / SIZES).is_file())
    if fresh:
        for f in (IMAGES, SIZES, DONE):
            (out_dir / f).unlink(missing_ok=True)
        write_json(index_path, index, indent=None)
        np.memmap(out_dir / IMAGES, dtype=np.uint8, mode="w+", shape=(n, size, size)).flush()
        np.memmap(out_dir / SIZES, dtype=np.uint32, mode="w+", shape=(n, 2)).flush()
        np.memmap(out_dir / DONE, dtype=np.uint8, mode="w+", shape=(n,)).flush()
    elif old.get("complete"):
        return old
    done = np.memmap(out_dir / DONE, dtype=np.uint8, mode="r+", shape=(n,))
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
