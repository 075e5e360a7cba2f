"""DICOM films (`.dcm`, VinDr's `.dicom`) through pydicom: decoded to the values a radiologist's viewer
shows, before images.py brings them to 8 bits like every other wide-range film.

The order is the standard's: stored values -> modality LUT (rescale slope and intercept) -> VOI LUT or
window -> display. MONOCHROME1 films (bright = low values) are flagged so that the caller inverts them
after scaling. Compressed transfer syntaxes decode where pydicom finds a decoder plug-in (pylibjpeg,
pyjpegls, gdcm, or Pillow for JPEG 2000); where it finds none, the error names the packages to install.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from roi_consistency.errors import UserError
from roi_consistency.files.atomic import atomic_write

SUFFIXES = (".dcm", ".dicom")
MAGIC_AT, MAGIC = 128, b"DICM"  # a Part 10 file: a 128-byte preamble, then "DICM"
# the sequence delimiter that ends encapsulated (compressed) pixel data: a copy cut short lacks it
ENCAPSULATED_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def is_dicom(path: str | Path, head: bytes | None = None) -> bool:
    """By its suffix, or by the "DICM" tag after the preamble (`head`: the file's first bytes, if read)."""
    if str(path).lower().endswith(SUFFIXES):
        return True
    if head is None:
        try:
            with open(path, "rb") as fh:
                head = fh.read(MAGIC_AT + 4)
        except OSError:
            return False
    return head[MAGIC_AT:MAGIC_AT + 4] == MAGIC


def read_header(path: str | Path) -> SimpleNamespace:
    """The header's fields that matter here (ds, the offset where the pixel data begins, syntax, rows,
    cols, frames, and bytes per sample); a header pydicom cannot parse, or without a transfer syntax or an
    image size, is refused: pydicom reads almost any bytes after "DICM", and parses values lazily."""
    import pydicom  # here, not at the top: the command line starts without it
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its complaints become our one-line error below
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            head = SimpleNamespace(ds=ds, at=fh.tell(), syntax=ds.file_meta.get("TransferSyntaxUID"),
                                   rows=int(ds.get("Rows") or 0), cols=int(ds.get("Columns") or 0),
                                   frames=int(ds.get("NumberOfFrames") or 1),
                                   samples=int(ds.get("SamplesPerPixel") or 1)  # bytes per pixel
                                   * -(-int(ds.get("BitsAllocated") or 8) // 8))
    except FileNotFoundError:
        raise
    except Exception as exc:  # pydicom raises many types for a broken header
        raise UserError(f"image {path}: not a readable DICOM file ({type(exc).__name__}: {first_line(exc)})") \
            from None
    needed = (("Transfer Syntax UID", head.syntax), ("Rows", head.rows), ("Columns", head.cols))
    missing = [k for k, v in needed if not v]
    if missing:
        raise UserError(f"image {path}: not a readable DICOM file (its header has no {', '.join(missing)})")
    return head


def first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:160]


def header_problem(path: Path) -> str | None:
    """What the pre-flight check says of a DICOM file, from its header and size alone, or None."""
    try:
        head = read_header(path)
    except UserError as exc:
        return str(exc).split(": ", 1)[-1]
    size = path.stat().st_size
    if head.at >= size:
        return "a DICOM without pixel data"
    if not head.syntax.is_transfer_syntax:
        return f"a DICOM with an unknown transfer syntax ({str(head.syntax)[:64]})"
    if head.syntax.is_compressed:
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 64))
            return None if ENCAPSULATED_END in fh.read() else f"a compressed DICOM cut short ({size} bytes)"
    need = head.rows * head.cols * head.frames * head.samples
    return None if size - head.at >= need else f"a DICOM cut short ({size} bytes, its pixel data needs {need})"


def dicom_pixels(path: str | Path, max_pixels: int) -> tuple[np.ndarray, tuple[int, int], tuple | None, bool]:
    """A film's display values as float64 [rows, cols]; its (width, height); the (black, white) values of
    its VOI LUT or window (None without one); and whether it is MONOCHROME1 (to invert once scaled)."""
    import pydicom
    head = read_header(path)  # the size first: a bomb is refused before its pixels are read
    if head.rows * head.cols * head.frames > max_pixels:
        raise UserError(f"image {path} claims {head.cols} x {head.rows} pixels in {head.frames} frame(s), more "
                        f"than {max_pixels:,}: a damaged or hostile file, or one to downsize before use")
    if head.frames != 1:
        raise UserError(f"image {path} holds {head.frames} frames; give one film per DICOM file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            values, black_white = display_values(ds, head)
            return values, (head.cols, head.rows), black_white, ds.get("PhotometricInterpretation") == "MONOCHROME1"
    except Exception as exc:  # a decoder plug-in, a LUT or a damaged element: all end as one line
        raise UserError(f"image {path}: {decode_failure(head, exc)}") from None


def display_values(ds, head: SimpleNamespace) -> tuple[np.ndarray, tuple | None]:
    """Stored values -> modality LUT -> VOI LUT or window, as float64 [rows, cols], and the VOI's output
    for the lowest and highest input (its black and white points), found by passing both through it."""
    import pydicom.pixels as px
    a, black_white = ds.pixel_array, None
    if a.shape[:2] != (head.rows, head.cols):
        raise ValueError(f"pixel data of shape {a.shape} for a {head.cols} x {head.rows} header")
    if a.ndim == 3:  # colour (rare for a film): the luminance; a VOI applies to monochrome films only
        return a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]), None
    a = px.apply_modality_lut(a, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        a = px.apply_voi_lut(a, ds)
        ends = px.apply_voi_lut(np.array([-2 ** 40, 2 ** 40], dtype=np.int64), ds)
        black_white = (float(ends[0]), float(ends[1]))
    return np.asarray(a, dtype=np.float64), black_white


def write_film(path: str | Path, pixels: np.ndarray) -> None:
    """An 8-bit film as a DICOM digital X-ray the way many scanners store one: 12 bits, MONOCHROME1 (bright
    = low values), with a window whose black and white points are the film's 0 and 255, so that reading
    it back gives the same 8-bit film. The phantom's `--format dicom`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(path)])  # deterministic, as the phantom is
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.Modality, ds.PatientID = "DX", Path(path).name[:8]
    ds.set_pixel_data((255 - pixels.astype(np.uint16)) * 16, "MONOCHROME1", 12, generate_instance_uid=False)
    # the linear window (DICOM PS3.3 C.11.2.1.2) maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] to black..white
    ds.WindowCenter, ds.WindowWidth = 2040.5, 4081
    atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def decode_failure(head: SimpleNamespace, exc: Exception) -> str:
    """Why the pixel data did not decode, in one line; for a missing plug-in, which packages to install."""
    text = str(exc)
    if "missing dependencies" in text or "plugins are missing" in text:
        syntax = head.syntax
        needs = [line.split(" - requires ", 1)[-1].strip() for line in text.splitlines() if " - requires " in line]
        return (f"its pixel data is compressed as {getattr(syntax, 'name', syntax)}, and no installed decoder "
                f"reads it; install one of: {'; '.join(needs) or 'pylibjpeg, pyjpegls or gdcm'}")
    if "no pixel data" in text.lower():
        return "a DICOM without pixel data"
    return f"the pixel data could not be decoded ({type(exc).__name__}: {first_line(exc)})"
