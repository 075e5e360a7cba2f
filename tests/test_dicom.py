"""DICOM films: the display transform of the standard (modality LUT, VOI window, MONOCHROME1 inverted),
any bit depth scaled by its real range, compressed pixel data, and one-line errors for broken files."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from dicom_files import dicom_bytes, film
from roi_consistency.data.cache import build_cache
from roi_consistency.data.images import ImageCache, decode_image
from roi_consistency.data.preflight import image_problem
from roi_consistency.errors import UserError


def test_monochrome1_12_bit_with_a_window_decodes_to_the_film_it_shows(tmp_path):
    g = film()
    stored = (255 - g.astype(np.uint16)) * 16  # MONOCHROME1: low values are bright; 12 bits used
    path = tmp_path / "m1.dcm"
    # the linear window maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] = [0, 4080] to black..white
    path.write_bytes(dicom_bytes(stored, "MONOCHROME1", 12, window=(2040.5, 4081)))
    x, size = decode_image(path, 40)
    assert size == (32, 40)  # (width, height) of the file: what box coordinates refer to
    resized = np.asarray(Image.fromarray(g).resize((40, 40), Image.BILINEAR))
    assert np.array_equal(x[0].numpy(), resized)
    # a window twice as wide shows the same film at half the contrast: its black and white points, not
    # the film's own range, set the 8-bit scale
    path.write_bytes(dicom_bytes(stored, "MONOCHROME1", 12, window=(2040.5, 8161)))
    x = decode_image(path, 32)[0][0].numpy().astype(int)
    assert 60 <= x.min() <= 68 and 187 <= x.max() <= 195


def test_16_bits_with_a_rescale_are_scaled_by_their_range_not_clipped(tmp_path):
    g = film(32, 32)
    stored = g.astype(np.uint16) * 257  # the whole 16-bit range: convert("L") would clip all to white
    (tmp_path / "m2.dicom").write_bytes(dicom_bytes(stored, bits=16, rescale=(2.0, -1000.0)))
    x, _ = decode_image(tmp_path / "m2.dicom", 32)
    assert np.array_equal(x[0].numpy(), g)


def test_a_window_narrower_than_the_data_is_applied(tmp_path):
    stored = np.tile(np.arange(0, 4096, 128, dtype=np.uint16), (8, 1))  # 0 .. 3968 in 32 columns
    (tmp_path / "w.dcm").write_bytes(dicom_bytes(stored, window=(2048, 1024)))
    x = decode_image(tmp_path / "w.dcm", 32)[0][0].numpy()
    row = x[0].astype(int)
    assert row[:12].max() == 0 and row[-12:].min() == 255  # below and above the window: black, white
    assert np.all(np.diff(row[12:20]) > 0)  # inside it: a ramp


def test_rle_compressed_decodes_like_uncompressed_and_the_cache_reads_dicom(tmp_path):
    g = film(32, 32)
    stored = g.astype(np.uint16) * 16
    (tmp_path / "plain.dcm").write_bytes(dicom_bytes(stored))
    (tmp_path / "rle.dcm").write_bytes(dicom_bytes(stored, compress="rle"))
    assert image_problem(tmp_path / "plain.dcm") is None and image_problem(tmp_path / "rle.dcm") is None
    a, b = decode_image(tmp_path / "plain.dcm", 32)[0], decode_image(tmp_path / "rle.dcm", 32)[0]
    assert torch.equal(a, b) and np.array_equal(a[0].numpy(), g)
    (tmp_path / "list.csv").write_text("image,labels\nplain.dcm,Mass\nrle.dcm,No Finding\n")
    build_cache([str(tmp_path / "list.csv")], str(tmp_path), 16, str(tmp_path / "cache"), workers=1, progress=False)
    cache = ImageCache(tmp_path / "cache")
    assert torch.equal(cache.get("rle.dcm"), decode_image(tmp_path / "rle.dcm", 16)[0])
    assert cache.source_size("plain.dcm") == (32, 32)


def one_line_error(path, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        decode_image(path, 16)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and str(path) in text, text
    return text


NO_JPEG_LS = not any(importlib.util.find_spec(m) for m in ("pylibjpeg", "jpeg_ls", "gdcm"))


@pytest.mark.skipif(not NO_JPEG_LS, reason="a JPEG-LS decoder is installed here")
def test_a_compression_without_its_decoder_names_the_packages(tmp_path):
    path = tmp_path / "jls.dcm"
    path.write_bytes(dicom_bytes(film().astype(np.uint16), compress="jpeg-ls"))
    assert image_problem(path) is None  # whole: the problem is this machine's, not the file's
    text = one_line_error(path, "JPEG-LS")
    assert "pylibjpeg" in text and "install one of" in text


def test_broken_dicom_files_are_one_line_errors_and_fail_the_preflight(tmp_path):
    g = film().astype(np.uint16)
    whole = dicom_bytes(g)
    cases = {"cut.dcm": (whole[:-300], "could not be decoded", "cut short"),
             "nopix.dcm": (dicom_bytes(g, pixels=False), "without pixel data", "without pixel data"),
             "junk.dcm": (b"\0" * 128 + b"DICM" + b"\xff" * 40, "not a readable DICOM", "not a readable DICOM"),
             "frames.dcm": (dicom_bytes(g, frames=2), "2 frames", None),
             "bomb.dcm": (dicom_bytes(g, claim=(60_000, 60_000)), "claims 60000 x 60000", "cut short")}
    for name, (data, error, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        one_line_error(path, error)
        found = image_problem(path)
        assert (found is None) if problem is None else (problem in found), (name, found)
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert image_problem(tmp_path / "empty.dcm") == "empty"
    one_line_error(tmp_path / "empty.dcm", "not a readable DICOM")


def test_a_dicom_phantom_is_the_png_phantom_through_every_stage(trained64, tmp_path):
    """`phantom --format dicom` writes the same films as DICOM: unify, make-csv, the pre-flight check, the
    cache and infer all take them, and the model sees the very pixels of the PNG phantom."""
    import json

    from roi_consistency import cli
    from roi_consistency.infer import infer_csv
    for fmt in ("png", "dicom"):
        d = tmp_path / fmt
        cli.main(["phantom", "--out", str(d), "--n-images", "60", "--size", "64", "--seed", "3", "--workers", "1",
                  "--format", fmt, "--quiet"])
        cli.main(["unify", "--data-root", str(d), "--quiet"])
        cli.main(["make-csv", "--data-root", str(d), "--out-dir", str(d / "csv")])
    png, dcm = tmp_path / "png", tmp_path / "dicom"
    entries = [(d / "Data_Entry_2017.csv").read_text() for d in (png, dcm)]
    assert entries[1] == entries[0].replace(".png", ".dcm")
    assert json.loads((dcm / "PHANTOM.json").read_text())["format"] == "dicom"
    names = [n.split(",")[0] for n in (dcm / "csv" / "nih_roi_test.csv").read_text().splitlines()[1:]]
    assert names and all(n.endswith(".dcm") and image_problem(dcm / "images" / n) is None for n in names)
    for n in names[:8]:
        a, size_a = decode_image(dcm / "images" / n, 64)
        b, size_b = decode_image(png / "images" / n.replace(".dcm", ".png"), 64)
        assert torch.equal(a, b) and size_a == size_b == (64, 64)
    preds = {}
    for fmt in ("png", "dicom"):
        d = tmp_path / fmt
        infer_csv(str(trained64), str(d / "csv" / "nih_roi_test.csv"), str(d / "images"), str(d / "preds.json"),
                  workers=0, progress=False)
        preds[fmt] = [p["prob_full"] for p in json.loads((d / "preds.json").read_text())["predictions"]]
    assert preds["png"] == preds["dicom"]
