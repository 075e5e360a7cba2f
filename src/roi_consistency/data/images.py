"""How an image reaches the model: decoded from its file, or read from the decoded-image cache
(cache.py builds it), as one uint8 channel at the model's size.

The cache is a folder of rows of one uint8 memory-mapped array:
- images.u8   raw uint8 array [N, size, size] (numpy memmap)
- sizes.u32   each source file's own (width, height), [N, 2]: box coordinates refer to it
- done.u8     one byte per row, 1 once that row is written and flushed (what makes a build resumable)
- index.json  names (row order), size, source folder, and "complete": true only after every row is done
A reader refuses a cache whose index does not say complete, so an interrupted build never passes for a
finished one.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from roi_consistency.data import dicom
from roi_consistency.errors import UserError

IMAGES, SIZES, DONE, INDEX = "images.u8", "sizes.u32", "done.u8", "index.json"


def decode_image(path: str | Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode one image (PNG, JPEG or DICOM) to a uint8 [1, size, size] tensor, and the file's own
    (width, height), which box coordinates refer to. RGBA/RGB files become one channel."""
    try:
        if dicom.is_dicom(path):
            return dicom_resized(path, size)
        with warnings.catch_warnings():
            # PIL only warns below twice its pixel limit; a film that large is not a chest film either
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return gray_resized(im, size), im.size
    except FileNotFoundError:
        raise UserError(f"image {path} not found (check --image-root)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"image {path} claims more than {Image.MAX_IMAGE_PIXELS:,} pixels: a damaged or hostile "
                        "file, or one to downsize before use") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports a broken PNG chunk as a SyntaxError
        raise UserError(f"image {path} could not be decoded ({exc})") from None


def dicom_resized(path: str | Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """A DICOM film as display values (dicom.py), scaled to 8 bits from its window's black to white, or
    without a window by its real range like any wide film; MONOCHROME1 inverted so that bone is bright."""
    values, source_size, black_white, inverted = dicom.dicom_pixels(path, Image.MAX_IMAGE_PIXELS)
    gray = to_uint8(values, *(black_white or ()))
    return gray_resized(Image.fromarray(255 - gray if inverted else gray), size), source_size


def gray_resized(im: Image.Image, size: int) -> torch.Tensor:
    """A PIL image as one uint8 channel [1, size, size]: the one way every image reaches the model."""
    im = im.convert("L") if im.mode not in WIDE else Image.fromarray(to_uint8(np.asarray(im)))
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)  # PIL antialiases when shrinking
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).unsqueeze(0)


WIDE = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16-bit, 32-bit and float films: more than 8 bits


def to_uint8(values: np.ndarray, black: float | None = None, white: float | None = None) -> np.ndarray:
    """A wide-range film in 8 bits, `black` to `white` (by default its own range) stretched to 0-255: PIL's
    convert("L") would clip every value above 255 to white, and a 12-bit film stored in 16 bits would
    otherwise be nearly black."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return np.zeros(a.shape, np.uint8)
    if black is None or white is None or not (np.isfinite(black) and np.isfinite(white)) or black == white:
        black, white = float(np.nanmin(a)), float(np.nanmax(a))
    if not (np.isfinite(black) and np.isfinite(white)) or white == black:
        return np.zeros(a.shape, np.uint8)
    scaled = (np.nan_to_num(a, nan=black, posinf=white, neginf=black) - black) * (255 / (white - black))
    return np.round(np.clip(scaled, 0, 255)).astype(np.uint8)


def source_size(path: str | Path) -> tuple[int, int]:
    """A film's own (width, height), which box coordinates refer to, from its header alone."""
    try:
        if dicom.is_dicom(path):
            head = dicom.read_header(path)
            return head.cols, head.rows
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise UserError(f"image {path} not found (check --image-root)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"image {path} could not be decoded ({exc})") from None


def load_image(path: str | Path, size: int) -> torch.Tensor:
    return decode_image(path, size)[0]


class ImageCache:
    """Read side: name -> uint8 [1, size, size] tensor from the memmap (opened lazily, per process)."""

    def __init__(self, path: str | Path, img_size: int | None = None):
        self.path = Path(path)
        index_path = self.path / INDEX
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
        sizes = self.path / SIZES  # absent in caches built before it was recorded
        self.sizes = np.fromfile(sizes, dtype=np.uint32).reshape(-1, 2) if sizes.is_file() else None
        self._arr = None

    def source_size(self, name: str) -> tuple[int, int] | None:
        """The (width, height) of the file a cached image came from (None: not recorded)."""
        i = self.row.get(name)
        return None if self.sizes is None or i is None else (int(self.sizes[i, 0]), int(self.sizes[i, 1]))

    def get(self, name: str):
        if self._arr is None:  # opened in the worker process, not pickled across
            self._arr = np.memmap(self.path / IMAGES, dtype=np.uint8, mode="r",
                                  shape=(len(self.names), self.size, self.size))
        i = self.row.get(name)
        if i is None:
            raise UserError(f"--cache {self.path}: image {name} is not in the cache; rebuild it with this CSV")
        return torch.from_numpy(np.array(self._arr[i])).unsqueeze(0)

    def __getstate__(self):
        return {**self.__dict__, "_arr": None}
