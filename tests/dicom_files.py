"""DICOM films written with pydicom for the tests: the header tags set by hand, so that the reader is
checked against the standard's meaning of each tag rather than against a writer of our own."""
import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, RLELossless, generate_uid


def dicom_bytes(stored: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, window=None,
                rescale=None, compress: str | None = None, frames: int = 1, pixels: bool = True,
                claim=None) -> bytes:
    """A Part 10 file holding `stored` (uint16 values, [rows, cols]) as a digital X-ray.
    window: (centre, width); rescale: (slope, intercept); compress: None, "rle", or "jpeg-ls" (junk bytes
    under JPEG-LS's transfer syntax: what a file looks like to a reader without that decoder);
    claim: (rows, cols) written into the header instead of the array's own."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["roi-consistency test film"])  # the same bytes each call
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "00000001"
    a = np.stack([stored] * frames) if frames > 1 else stored
    ds.set_pixel_data(a.astype(np.uint16 if bits > 8 else np.uint8), photometric, bits, generate_instance_uid=False)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = rescale[0], rescale[1], "US"
    if compress == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    elif compress == "jpeg-ls":
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS \xff\xd9"])
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    if not pixels:
        del ds.PixelData
    if claim:
        ds.Rows, ds.Columns = claim
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def film(rows: int = 40, cols: int = 32, seed: int = 0) -> np.ndarray:
    """An 8-bit film that reaches both 0 and 255, so that scaling by its own range is exact."""
    g = np.random.default_rng(seed).integers(0, 256, (rows, cols)).astype(np.uint8)
    g.flat[0], g.flat[1] = 0, 255
    return g
