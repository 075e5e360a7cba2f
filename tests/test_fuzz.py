"""Property-based tests over what users hand the tool: whatever the CSV, box list or checkpoint, a command
exits 0, or exits 2 with at most two lines that name the file, row or flag, and writes nothing half-made.

CI runs a bounded number of examples; ROI_FUZZ_EXAMPLES=600 runs ten times as many (docs/data.md)."""
import io
import os
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dicom_files import dicom_bytes
from roi_consistency import cli, flags
from roi_consistency.data.boxes import read_boxes
from roi_consistency.data.dataset import read_label_csv
from roi_consistency.data.images import decode_image
from roi_consistency.data.labels import FINDINGS, classes_in
from roi_consistency.data.nih import read_data_entry
from roi_consistency.data.preflight import image_problem
from roi_consistency.errors import UserError

EXAMPLES = int(os.environ.get("ROI_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOW = settings(FUZZ, max_examples=max(4, EXAMPLES // 6))  # each example runs a whole command

FIELDS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["a.png", "00000001_000.png", "../up.png", "/etc/passwd", "sub/../../x.png", "café.png",
                     "名前.png", "Mass", "Mass|Nodule", "Normal", "No Finding", "Masss", "mass", "", " ", '"',
                     '"a,b"', ",", "x" * 5000, "-1", "nan", "1e308", "0", "10", "Effusion|"]))
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16"])
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def csv_files(draw, header: list[str]) -> bytes:
    """A CSV as a user might save it: the expected header or a mangled one, rows of any width with any
    fields, some repeated, with any line end, in any of several encodings."""
    head = draw(st.one_of(st.just(header), st.lists(st.sampled_from(header + ["extra", "", "image"]), max_size=5)))
    rows = draw(st.lists(st.lists(FIELDS, max_size=len(header) + 2), max_size=6))
    if rows and draw(st.booleans()):
        rows += [rows[0]] * draw(st.integers(1, 3))
    text = draw(LINE_ENDS).join(",".join(r) for r in [head, *rows])
    return text.encode(draw(ENCODINGS), errors="replace")


def explained(call, path) -> None:
    """`call` returns, or raises a UserError of at most two lines that names `path`."""
    try:
        call()
    except UserError as exc:
        lines = str(exc).strip().splitlines()
        assert 1 <= len(lines) <= 2 and str(path) in lines[0], str(exc)


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), csv_files(["image", "labels"])))
def test_any_label_csv_is_read_or_explained(data, tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    explained(lambda: read_label_csv(path, FINDINGS), path)
    explained(lambda: classes_in(path), path)  # what train reads for its findings when --classes is not given


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), csv_files(["Image Index", "Finding Label", "x", "y", "w", "h"])))
def test_any_box_list_is_read_or_explained(data, tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_bytes(data)
    explained(lambda: read_boxes(path), path)


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), csv_files(["Image Index", "Finding Labels", "Patient ID"])))
def test_any_metadata_csv_is_read_or_explained(data, tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_bytes(data)
    explained(lambda: read_data_entry(path), path)


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "img/s" not in ln
            and not ln.startswith(("warning:", "infer:", "evaluate:"))]


def command_explains(argv: list[str], capsys, out) -> None:
    """The command exits 0, or 2 with one or two lines and without leaving `out` behind."""
    try:
        cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert 1 <= len(error_lines(err)) <= 2 and not out.exists(), err


@SLOW
@given(data=csv_files(["image", "labels"]), real=st.integers(0, 3))
def test_infer_on_any_csv_exits_cleanly(data, real, trained64, phantom64, tmp_path, capsys):
    names = sorted(p.name for p in phantom64["images"].iterdir())[:real]
    path = tmp_path / "test.csv"
    path.write_bytes(data + "".join(f"\n{n},Mass" for n in names).encode())
    out = tmp_path / "preds.json"
    out.unlink(missing_ok=True)
    command_explains(["infer", "--checkpoint", str(trained64), "--csv", str(path), "--image-root",
                      str(phantom64["images"]), "--out", str(out), "--workers", "0"], capsys, out)


@SLOW
@given(cut=st.floats(0, 1), flips=st.integers(0, 8), seed=st.integers(0, 2**16))
def test_a_damaged_checkpoint_is_refused_in_one_line(cut, flips, seed, trained64, phantom64, tmp_path, capsys):
    data = bytearray(trained64.read_bytes()[: int(cut * trained64.stat().st_size)])
    rng = random.Random(seed)
    for _ in range(flips if data else 0):
        data[rng.randrange(len(data))] = rng.randrange(256)
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(data))
    out = tmp_path / "preds.json"
    out.unlink(missing_ok=True)
    command_explains(["infer", "--checkpoint", str(path), "--csv", str(phantom64["val"]), "--image-root",
                      str(phantom64["images"]), "--out", str(out), "--workers", "0"], capsys, out)


@pytest.mark.parametrize("change", ["format", "missing", "shape", "thresholds"])
def test_a_checkpoint_with_another_format_missing_keys_wrong_shapes_or_bad_thresholds_is_refused(
        change, trained64, phantom64, tmp_path, capsys):
    state = torch.load(trained64, weights_only=True)
    if change == "format":
        state["format"] = "roi-consistency/99"
    elif change == "missing":
        state.pop("backbone")
    elif change == "thresholds":  # the one the longer run found: scoring failed on it mid-run
        state["thresholds"] = {"rule": "youden", "values": {"Mass": "0.5"}}
    else:
        key = next(k for k, v in state["backbone"].items() if v.ndim == 4)
        state["backbone"][key] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / f"{change}.pt"
    torch.save(state, path)
    out = tmp_path / "preds.json"
    command_explains(["infer", "--checkpoint", str(path), "--csv", str(phantom64["val"]), "--image-root",
                      str(phantom64["images"]), "--out", str(out), "--workers", "0"], capsys, out)
    assert not out.exists()


def test_the_inputs_that_once_raised_a_traceback_are_one_line(trained64, phantom64, tmp_path, capsys):
    """Binary junk and a Latin-1 file name as CSVs, against infer and evaluate."""
    for data in (bytes(range(256)) * 3, "image,labels\ncafé.png,Mass\n".encode("latin-1")):
        path = tmp_path / "bad.csv"
        path.write_bytes(data)
        for cmd in ("infer", "evaluate"):
            out = tmp_path / ("preds.json" if cmd == "infer" else "eval")
            flag = "--out" if cmd == "infer" else "--out-dir"
            with pytest.raises(SystemExit):
                cli.main([cmd, "--checkpoint", str(trained64), "--csv", str(path), "--image-root",
                          str(phantom64["images"]), flag, str(out)])
            err = error_lines(capsys.readouterr().err)
            assert len(err) == 1 and "not UTF-8" in err[0] and str(path) in err[0], err


def test_extra_fields_are_an_error_a_repeated_film_a_warning_and_bom_crlf_fine(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_bytes(b"image,labels\na.png,Mass,oops\n")
    with pytest.raises(UserError, match="line 2: 3 field"):
        read_label_csv(path, FINDINGS)
    path.write_bytes("\ufeffimage,labels\r\na.png,Mass\r\na.png,Mass\r\nb.png,Normal\r\n".encode())
    names, labels, _ = read_label_csv(path, FINDINGS)
    assert names == ["a.png", "a.png", "b.png"] and labels[:, FINDINGS.index("Mass")].tolist() == [1, 1, 0]
    assert "a.png, 2 times" in capsys.readouterr().err


def png_claiming(w: int, h: int) -> bytes:
    """A 60-byte PNG whose header claims w x h pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


MODES = {"L": np.uint8, "P": np.uint8, "1": np.bool_, "LA": np.uint8, "RGB": np.uint8, "RGBA": np.uint8,
         "CMYK": np.uint8, "I;16": np.uint16}


@st.composite
def image_files(draw) -> bytes:
    """A film in any mode PIL writes, as PNG or JPEG, or as DICOM, maybe cut short or with flipped bytes; or
    no image at all: empty, text, a bomb."""
    kind = draw(st.sampled_from(["image"] * 6 + ["dicom"] * 3 + ["empty", "text", "bomb"]))
    if kind == "dicom":
        return damaged(draw, draw(dicom_files()))
    if kind != "image":
        return {"empty": b"", "text": b"image,labels\na.png,Mass\n", "bomb": png_claiming(100_000, 100_000)}[kind]
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = {"CMYK": "JPEG", "L": draw(st.sampled_from(["PNG", "JPEG"])), "RGB": "JPEG"}.get(mode, "PNG")
    w, h, seed = draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(0, 99))
    shape = (h, w, len(mode)) if mode in ("LA", "RGB", "RGBA", "CMYK") else (h, w)
    a = np.random.default_rng(seed).integers(0, 4096 if mode == "I;16" else 256, shape)
    im = Image.fromarray(a.astype(MODES[mode]), mode if mode in ("LA", "RGB", "RGBA", "CMYK") else None)
    im = im.convert(mode) if im.mode != mode else im
    buf = io.BytesIO()
    im.save(buf, fmt)
    return damaged(draw, buf.getvalue())


@st.composite
def dicom_files(draw) -> bytes:
    """A DICOM film of any photometric interpretation and bit depth, windowed, rescaled, RLE-compressed or
    claiming another size."""
    w, h, bits = draw(st.integers(1, 24)), draw(st.integers(1, 24)), draw(st.sampled_from([8, 12, 16]))
    stored = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 2 ** bits, (h, w))
    window = draw(st.none() | st.tuples(st.integers(-5000, 70000), st.integers(-2, 70000)))
    rescale = draw(st.none() | st.tuples(st.sampled_from([1.0, 0.5, -1.0, 0.0]), st.integers(-3000, 3000)))
    return dicom_bytes(stored, draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2"])), bits, window=window,
                       rescale=rescale, compress=draw(st.sampled_from([None, "rle", "jpeg-ls"])),
                       frames=draw(st.sampled_from([1, 1, 1, 2])),
                       claim=draw(st.none() | st.tuples(st.integers(0, 65535), st.integers(0, 65535))))


def damaged(draw, whole: bytes) -> bytes:
    """`whole`, maybe cut short, maybe with up to three flipped bytes."""
    data = bytearray(whole)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    for i in draw(st.lists(st.integers(0, max(len(data) - 1, 0)), max_size=3)) if data else []:
        data[i] ^= 0xFF
    return bytes(data)


@FUZZ
@given(data=image_files(), suffix=st.sampled_from([".png", ".dcm"]))
def test_any_image_file_decodes_or_is_explained(data, suffix, tmp_path):
    path = tmp_path / f"film{suffix}"
    path.write_bytes(data)
    assert image_problem(path) is None or isinstance(image_problem(path), str)
    try:
        x, _ = decode_image(path, 24)
    except UserError as exc:
        assert len(str(exc).splitlines()) == 1 and str(path) in str(exc), str(exc)
    else:
        assert x.shape == (1, 24, 24) and x.dtype == torch.uint8


def test_a_16_bit_film_keeps_its_range_and_a_bomb_is_one_line(tmp_path):
    a = np.linspace(0, 4095, 32 * 32).reshape(32, 32).astype(np.uint16)  # a 12-bit film in 16 bits
    Image.fromarray(a).save(tmp_path / "wide.png")
    x, _ = decode_image(tmp_path / "wide.png", 32)
    assert x.min() == 0 and x.max() == 255 and len(x.unique()) > 200
    (tmp_path / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    assert image_problem(tmp_path / "bomb.png") is None  # a whole PNG by its signature and its end ...
    with pytest.raises(UserError, match="claims more than"):  # ... refused when decoded
        decode_image(tmp_path / "bomb.png", 32)


@pytest.fixture(scope="module")
def export_dir(trained64, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz_export") / "model"
    cli.main(["export", "--checkpoint", str(trained64), "--out", str(out)])
    return out


def json_paths(obj, path=()):
    """Every path into a JSON tree, the leaves and the branches."""
    yield path
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from json_paths(v, (*path, k))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)


@SLOW
@given(picks=st.lists(st.tuples(st.integers(0, 10**6), st.one_of(st.just("drop"), JSON_VALUES)), min_size=1,
                      max_size=3))
def test_an_exported_folder_with_a_mangled_config_is_refused_or_loads(picks, export_dir, phantom64, tmp_path,
                                                                     capsys):
    """config.json edited by hand (its checksum still right): keys dropped or given other values."""
    import json
    import shutil
    folder = tmp_path / "model"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(export_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    for i, value in picks:
        paths = [p for p in json_paths(config) if p and p[0] != "sha256"]
        *parent, key = paths[i % len(paths)]
        node = config
        for k in parent:
            node = node[k]
        if value == "drop":
            node.pop(key) if isinstance(node, dict) else node.pop(key)
        else:
            node[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "preds.json"
    out.unlink(missing_ok=True)
    command_explains(["infer", "--checkpoint", str(folder), "--csv", str(phantom64["val"]), "--image-root",
                      str(phantom64["images"]), "--out", str(out), "--workers", "0"], capsys, out)


def test_the_config_values_the_longer_run_found_are_one_line(export_dir, phantom64, tmp_path, capsys):
    """The 600-example run found a config.json whose class list was null or held a list (TypeError
    tracebacks); a size of a million pixels would have resized each film to 10^12 pixels. (The top-level
    classes, img_size and keep_ratio only describe the model: the training config is what is read.)"""
    import json
    import shutil
    for where in (("training_config", "data"), ("training_config", "model"), ("training_config", "method")):
        for key in ("classes", "img_size", "keep_ratio"):
            for value in (None, [], [[]], ["Mass", "Mass"], 10**6, -1, True, "x"):
                config = json.loads((export_dir / "config.json").read_text())
                node = config
                for k in where:
                    node = node[k]
                if key not in node:
                    continue
                node[key] = value
                folder = tmp_path / "model"
                shutil.rmtree(folder, ignore_errors=True)
                shutil.copytree(export_dir, folder)
                (folder / "config.json").write_text(json.dumps(config))
                out = tmp_path / "preds.json"
                with pytest.raises(SystemExit) as info:
                    cli.main(["infer", "--checkpoint", str(folder), "--csv", str(phantom64["val"]), "--image-root",
                              str(phantom64["images"]), "--out", str(out), "--workers", "0"])
                err = error_lines(capsys.readouterr().err)
                assert info.value.code == 2 and len(err) == 1 and str(folder) in err[0], (where, key, value, err)
                assert not out.exists()


def test_a_box_outside_its_image_is_refused_naming_the_list(phantom64, tmp_path):
    from roi_consistency.data.boxes import model_boxes
    from roi_consistency.data.dataset import ImageCSVDataset
    ds = ImageCSVDataset(phantom64["val"], phantom64["images"], 48, list(FINDINGS))
    path = tmp_path / "boxes.csv"
    path.write_text(f"Image Index,Finding Label,x,y,w,h\n{ds.names[0]},Mass,5000,10,20,20\n")
    with pytest.raises(UserError, match=r"--bbox .*boxes.csv: the Mass box of .* lies outside the image"):
        model_boxes(ds, str(path), list(FINDINGS), 48)
    path.write_text(f"Image Index,Finding Label,x,y,w,h\n{ds.names[0]},Mass,10,10,-5,20\n")
    with pytest.raises(UserError, match="line 2: box 10,10,-5,20 is not a box"):
        model_boxes(ds, str(path), list(FINDINGS), 48)


def numeric_flags() -> list[tuple[str, str, object]]:
    """(command, flag, type) for every flag of every command that takes a number."""
    import argparse
    parser, found = cli.build_parser(), []
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if action.option_strings and action.type not in (None, str, flags.findings):  # findings: a list
                found.append((name, action.option_strings[0], action.type))
    return found


def test_every_numeric_flag_has_a_range():
    found = numeric_flags()
    assert len(found) > 30 and {c for c, _, _ in found} >= {"train", "infer", "evaluate", "phantom", "cache"}
    plain = [(c, f) for c, f, kind in found if kind in (int, float)]
    assert plain == [], plain


NUMBERS = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e30", "99999999999", "0.5", "1", "", "x",
                                     "1,5", "0x10", " 3"]))


@FUZZ
@given(pick=st.integers(0, 10**6), text=NUMBERS)
def test_a_numeric_flag_takes_a_number_in_its_range_or_names_itself_in_one_line(pick, text, capsys):
    command, flag, kind = (found := numeric_flags())[pick % len(found)]
    scoring = ["--checkpoint", "c", "--csv", "x", "--image-root", "."]
    required = {"train": [], "infer": scoring, "evaluate": scoring, "calibrate": scoring,
                "sanity": [*scoring, "--train-csv", "t", "--val-csv", "v"], "phantom": ["--out", "o"],
                "cache": ["--csv", "x", "--image-root", ".", "--out", "o"], "make-csv": ["--data-root", "d"],
                "screenshot": ["r.html", "o.png"]}[command]
    try:
        args = cli.build_parser().parse_args([command, *required, f"{flag}={text}"])
    except SystemExit as exc:
        err = capsys.readouterr().err.strip()
        assert exc.code == 2 and len(err.splitlines()) == 1 and flag in err, err
    else:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        assert np.isfinite(value) and value >= 0, (flag, text, value)


@SLOW
@given(keep=st.floats(1e-12, 1.0), batch=st.integers(1, 1024), vis=st.integers(0, 3))
def test_infer_runs_at_the_ends_of_every_flag_range(keep, batch, vis, trained64, phantom64, tmp_path, capsys):
    """In-range values work, the extremes included: a keep ratio of 1e-12 still keeps a pixel."""
    import shutil
    out = tmp_path / "preds.json"
    out.unlink(missing_ok=True)
    shutil.rmtree(tmp_path / "vis", ignore_errors=True)
    cli.main(["infer", "--checkpoint", str(trained64), "--csv", str(phantom64["val"]), "--image-root",
              str(phantom64["images"]), "--out", str(out), "--workers", "0", "--keep-ratio", repr(keep),
              "--batch-size", str(batch), "--vis-limit", str(vis), "--vis-dir", str(tmp_path / "vis")])
    assert out.is_file() and len(list((tmp_path / "vis").glob("*_overlay.png"))) <= vis
