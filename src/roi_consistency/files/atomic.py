"""The one way this tool writes a file: to a temporary name in the same folder, then a rename.

A crash, Ctrl+C or a full disk mid-write therefore never leaves a truncated file under the final name,
and the previous version stays intact until the new one is complete. Checkpoints, JSON, CSVs, PNGs,
HTML and the phantom's files all go through `atomic_write`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from roi_consistency.errors import UserError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call write(tmp) for a temporary path beside `path`, then rename it over `path`. A failed write (a
    full disk, a read-only folder) is a UserError naming the file; the previous file stays as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: ranks and workers never collide
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"could not write {path}: {exc.strerror or exc}; free space or pick a writable folder "
                        f"(the previous {path.name}, if any, is unchanged)") from None
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent))


def write_png(path: str | os.PathLike, image, **save_kw) -> Path:
    """A PIL image, or a 2-D/3-D array (uint8 as is; floats in [0, 1] scaled to 0-255)."""
    import numpy as np
    from PIL import Image
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        image = Image.fromarray(arr if arr.dtype == np.uint8 else (arr.clip(0, 1) * 255).astype(np.uint8))
    return atomic_write(path, lambda p: image.save(p, format="PNG", **save_kw))
