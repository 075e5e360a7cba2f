"""The pre-flight check: before a run reads thousands of images, every image a CSV names must exist and
look like a whole PNG, JPEG or DICOM file, so one bad file is found in seconds rather than hours into an epoch.

A file passes when it starts with the PNG or JPEG signature, a PNG's header gives a non-zero size, and it
ends as such a file ends (a PNG's IEND chunk, a JPEG's end-of-image marker): a copy cut short fails. A
DICOM file's header is read, and the file must hold the pixel data the header promises. Only the first
and last bytes (or the DICOM header) are read, in parallel, so the 112,120 NIH images take seconds.
"""
from __future__ import annotations

import os
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from roi_consistency.data import dicom
from roi_consistency.errors import UserError

PNG, JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
PNG_END, JPEG_END = b"IEND\xaeB`\x82", b"\xff\xd9"
SHOWN = 5  # how many bad images an error or a warning names


def image_problem(path: Path) -> str | None:
    """What is wrong with one image file, or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(dicom.MAGIC_AT + 4)
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 64))
            tail = fh.read()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not head:
        return "empty"
    if dicom.is_dicom(path, head):
        return dicom.header_problem(path)
    if head.startswith(PNG):
        w, h = struct.unpack(">II", head[16:24]) if len(head) >= 24 and head[12:16] == b"IHDR" else (0, 0)
        if not (w and h):
            return "a PNG without a valid header"
        return None if tail.endswith(PNG_END) else f"a PNG cut short ({size} bytes)"
    if head.startswith(JPEG):
        return None if JPEG_END in tail[-16:] else f"a JPEG cut short ({size} bytes)"
    return "neither a PNG, a JPEG nor a DICOM file"


def check_images(names: list[str], root: str | Path, what: str, progress: bool = True) -> dict[str, str]:
    """{name: problem} for every bad image among `names` under `root`, checked on all cores."""
    root = Path(root)
    workers = min(32, 4 * (os.cpu_count() or 1))  # I/O-bound: more threads than cores
    with ThreadPoolExecutor(workers) as pool:
        problems = list(tqdm(pool.map(lambda n: image_problem(root / n), names, chunksize=256), total=len(names),
                             desc=f"check {what}", unit="img", disable=not progress, leave=False))
    return {n: p for n, p in zip(names, problems) if p is not None}


def list_bad(bad: dict[str, str], root: str | Path) -> str:
    shown = "; ".join(f"{n}: {p}" for n, p in list(bad.items())[:SHOWN])
    return f"{len(bad)} bad image(s) under {root} ({shown}{'; …' if len(bad) > SHOWN else ''})"


def preflight(names: list[str], root: str | Path, what: str, skip_bad: bool, progress: bool = True) -> set[str]:
    """Check the images of one CSV. Bad ones are an error naming them, or with skip_bad a warning: the
    names to leave out are returned."""
    bad = check_images(names, root, what, progress)
    if not bad:
        return set()
    if not skip_bad:
        raise UserError(f"{what}: {list_bad(bad, root)}. Fix or remove them, or pass --skip-bad-images to leave "
                        "them out")
    print(f"warning: {what}: leaving out {list_bad(bad, root)} (--skip-bad-images)", file=sys.stderr)
    return set(bad)
