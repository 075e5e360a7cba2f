"""A synthetic chest-radiograph data set laid out exactly like the Kaggle copy of NIH ChestX-ray14.

Why: every later stage (flattening the image shards, building the split CSVs, training the classifier
with its learned region-of-interest mask, scoring localisation against boxes) must run offline on a
CPU through the real code path. A phantom also gives ground truth that NIH lacks: each finding is a
lesion drawn at a known place, a classifier can only score well by looking at it, and every lesion
has a box, so we can measure whether a learned mask finds it.

What is copied from NIH: shard folders `images_001/images/…`, file names `PPPPPPPP_FFF.png`,
`Data_Entry_2017.csv` and `BBox_List_2017.csv` with their exact headers (trailing comma, the
`Bbox [x,y,w,h],,,` quirk, `Infiltrate` in the box file), patient-wise `train_val_list.txt` /
`test_list.txt`, boxes only on test images, 8-bit grayscale PNGs with about 1% stored as RGBA.

Two lesion families exist: style "default", and style "alt" with other shapes, placements and
intensity profiles, so a method can be checked against a phantom it was not tuned on.

A shortcut phantom (`--shortcut FINDING`) adds a bright laterality-tag-like glyph in a top corner,
outside the body: on about 90 % of FINDING's films and 5 % of the others in the train and validation
patients, so that a model can learn the marker instead of the lesion; on the test patients also on a
third of the films without FINDING, the films that tell a model that uses the marker from one that
does not. `--shortcut-control` places it on 30 % of all films, whatever their labels. It writes
confounders.csv (the marker's box on every marked test film, listed for FINDING: `evaluate
--confounders`) and twins/ (those films, the same pixels, without the marker: the truth that removal
estimates). The training fill, the mean normal film, is computed by `train` from the training CSV and
so includes the 5 % of normal films that carry a marker: a ghost at about 5 % of its contrast, split
between the two corners.
"""
from __future__ import annotations

import functools
import math
import multiprocessing
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from roi_consistency.data.dicom import write_film as write_dicom_film
from roi_consistency.data.labels import FINDINGS, NO_FINDING
from roi_consistency.errors import UserError
from roi_consistency.files.atomic import write_json, write_png, write_text

DEFAULT_FINDINGS = ("Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax")
STYLES = ("default", "alt")
DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                     "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BBOX_SPELLING = {"Infiltration": "Infiltrate"}  # the real box file spells this one differently
N_SHARDS, TEST_FRACTION, RGBA_FRACTION = 12, 0.2, 0.01
MAX_IMAGES, MAX_SIZE = 1_000_000, 4096  # ten times NIH's films, four times their side: beyond is a typo
_NAME = re.compile(r"\d{8}_\d{3}\.(png|dcm)")
FORMATS = {"png": ".png", "dicom": ".dcm"}  # --format: the files' kind and suffix

# Lungs in anatomy coordinates (fractions of the image): centre, radii, dome height, lateral sign.
# Index 0 is image-left (the patient's right); its hemidiaphragm sits higher, as on a PA film.
_LUNGS = ((0.3, 0.47, 0.16, 0.33, 0.68, -1.0), (0.7, 0.48, 0.155, 0.32, 0.70, 1.0))


class PhantomError(UserError, ValueError):
    """Bad arguments to the phantom generator (a ValueError, and a clean CLI message)."""


def _check(findings, style) -> tuple[str, ...]:
    if style not in STYLES:
        raise PhantomError(f"unknown phantom style {style!r}; expected one of: {', '.join(STYLES)}")
    for f in findings:
        if f not in FINDINGS:
            raise PhantomError(f"unknown finding {f!r}; expected one of: {', '.join(FINDINGS)}")
        if f not in DEFAULT_FINDINGS:
            raise PhantomError(f"the phantom cannot draw {f!r}; supported: {', '.join(DEFAULT_FINDINGS)}")
    return tuple(f for f in FINDINGS if f in findings)  # canonical order, no duplicates


@functools.lru_cache(maxsize=8)
def _grid(size: int):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]  # x as a row, y as a column: broadcasting gives full images cheaply


def _noise(rng, size: int, cells: int) -> np.ndarray:
    """Smooth unit-variance noise: white noise on a coarse grid upsampled bilinearly (no scipy)."""
    low = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR))


def _soft(d, edge):
    """1 well inside (d small), smooth ramp to 0 at d == 1; `edge` is the ramp width."""
    t = np.clip((1.0 - d) / edge, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _dist(u, v, cx, cy, rx, ry, angle=0.0):
    """Normalised elliptical distance: 1 on the ellipse boundary."""
    du, dv = u - cx, v - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        du, dv = c * du + s * dv, c * dv - s * du
    return np.sqrt((du / rx) ** 2 + (dv / ry) ** 2)


def _point(rng, lung, vert, horiz=0.6):
    """A point inside a lung: `vert` bounds the height in units of the lung's vertical radius."""
    cx, cy, rx, ry, dome, _ = lung
    t = rng.uniform(*vert)
    x = cx + rx * math.sqrt(1.0 - t * t) * rng.uniform(-horiz, horiz)
    return x, min(cy + t * ry, dome - 0.04)


def _box(mask) -> tuple[float, float, float, float]:
    """Tight pixel box (x, y, w, h) around where the lesion mask is at least a tenth of its peak."""
    on = mask >= 0.1 * float(mask.max())
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))


# --- lesions: each edits c.img in place and returns the lesion's extent mask (for its box) -------
# Amplitudes (~0.1-0.2 on a 0-1 scale where lung is ~0.25 and soft tissue ~0.45) are meant to be
# subtle-to-moderate over the texture, never saturating.

def _nodule(c, rng, alt):
    s = int(rng.integers(2))
    if alt:  # elongated, rotated, peaked profile, lower/peripheral zones
        cx, cy = _point(rng, _LUNGS[s], (0.0, 0.55), 0.75)
        r = rng.uniform(0.03, 0.045)
        m = _soft(_dist(c.U, c.V, cx, cy, r * rng.uniform(1.6, 2.2), r * 0.6, rng.uniform(0, math.pi)), 1.0)
    else:  # small round flat-topped disc anywhere in a lung
        cx, cy = _point(rng, _LUNGS[s], (-0.65, 0.45))
        r = rng.uniform(0.025, 0.04)
        m = _soft(_dist(c.U, c.V, cx, cy, r, r), 0.35)
    c.img += rng.uniform(*((0.18, 0.24) if alt else (0.13, 0.18))) * m  # peaked profile needs more
    return m


def _mass(c, rng, alt):
    lung = _LUNGS[int(rng.integers(2))]
    if alt:  # perihilar, cavitating (bright rim, lucent centre)
        cx = lung[0] - lung[5] * lung[2] * rng.uniform(0.15, 0.35)
        cy = lung[1] + lung[3] * rng.uniform(-0.2, 0.15)
        rad = rng.uniform(0.06, 0.09)
    else:  # large lobulated blob in the mid lung
        cx, cy = _point(rng, lung, (-0.45, 0.3), 0.45)
        rad = rng.uniform(0.07, 0.10)
    theta = np.arctan2(c.V - cy, c.U - cx)
    p1, p2 = rng.uniform(0, 2 * math.pi, 2).tolist()
    lobes = 1 + 0.12 * np.sin(3 * theta + p1) + 0.07 * np.sin(5 * theta + p2)
    d = _dist(c.U, c.V, cx, cy, rad, rad) / lobes
    m = _soft(d, 0.3)
    shade = m - 0.65 * _soft(d / 0.5, 0.6) if alt else m * (0.9 + 0.1 * c.tex[2])
    c.img += rng.uniform(0.14, 0.2) * shade
    return m


def _effusion(c, rng, alt):
    s = int(rng.integers(2))
    cx, cy, rx, ry, dome, lat = _LUNGS[s]
    if alt:  # lamellar fluid along the lateral chest wall, thickening towards the base
        thick = rng.uniform(0.18, 0.25) + rng.uniform(0.3, 0.45) * np.clip((c.V - cy) / ry, 0, 1)
        top = cy - rng.uniform(0.1, 0.35) * ry
        rim = np.clip((c.lung_d[s] - (1 - thick)) / 0.05, 0, 1)
        lateral = np.clip((c.U - cx) * lat / rx / 0.2 + 1, 0, 1)
        m = rim * lateral * np.clip((c.V - top) / 0.03, 0, 1) * c.lungs[s]
    else:  # basal fluid with a meniscus climbing laterally into the costophrenic angle
        level = dome - rng.uniform(0.12, 0.2)
        surface = level - 0.07 * np.clip((c.U - cx) * lat / rx, 0, 1) ** 2
        m = np.clip((c.V - surface) / 0.012, 0, 1) * c.lungs[s]
    c.img += m * (0.5 - c.img) * rng.uniform(0.6, 0.8)  # blend towards homogeneous soft tissue
    return m


def _pneumothorax(c, rng, alt):
    s = int(rng.integers(2))
    cx, cy, rx, ry, dome, lat = _LUNGS[s]
    if alt:  # basal / deep-sulcus air
        px, py = cx + lat * 0.5 * rx, dome - 0.02
        a, b = rng.uniform(0.45, 0.6) * rx, rng.uniform(0.2, 0.3) * ry
    else:  # apical-lateral air cap
        px, py = cx + lat * 0.45 * rx, cy - 0.72 * ry
        a, b = rng.uniform(0.5, 0.75) * rx, rng.uniform(0.3, 0.45) * ry
    d = _dist(c.U, c.V, px, py, a, b)
    air = np.clip((1 - d) / 0.04, 0, 1) * c.lungs[s]
    line = np.exp(-(((d - 1) / 0.03) ** 2)) * c.lungs[s]  # visceral pleural line
    c.img += air * (-rng.uniform(0.08, 0.11) - c.vessels[s]) + 0.1 * line  # dark, no lung markings
    return np.maximum(air, line)


def _infiltration(c, rng, alt):
    s = int(rng.integers(2))
    if alt:  # reticular streaks in an upper zone
        cx, cy = _point(rng, _LUNGS[s], (-0.6, -0.1))
        ang = rng.uniform(0, math.pi)
        region = _soft(_dist(c.U, c.V, cx, cy, rng.uniform(0.08, 0.11), rng.uniform(0.06, 0.09), ang), 0.5)
        phase = (c.U - cx) * math.cos(ang + 1.2) + (c.V - cy) * math.sin(ang + 1.2)
        phase = phase + 0.01 * _noise(rng, c.size, 12)  # wavy, not ruled, lines
        pattern = np.clip(0.5 + 0.5 * np.cos(phase * (2 * math.pi / 0.022)), 0, 1) ** 3
    else:  # fluffy patchy opacity in the mid/lower zone
        cx, cy = _point(rng, _LUNGS[s], (-0.3, 0.4))
        region = _soft(_dist(c.U, c.V, cx, cy, rng.uniform(0.07, 0.1), rng.uniform(0.09, 0.13)), 0.5)
        pattern = np.clip(0.35 + 0.6 * _noise(rng, c.size, 22), 0, 1)
    m = region * pattern * c.lungs[s]
    c.img += rng.uniform(0.16, 0.2) * m
    return region * c.lungs[s]


_LESIONS = {"Nodule": _nodule, "Mass": _mass, "Effusion": _effusion,
            "Pneumothorax": _pneumothorax, "Infiltration": _infiltration}


def render_image(rng, size: int, findings_on_image=(), style: str = "default"):
    """Draw one phantom radiograph; returns (uint8 array (size, size), {finding: (x, y, w, h)})."""
    findings = _check(findings_on_image, style)
    alt = style == "alt"
    u, v = _grid(size)
    c = SimpleNamespace(size=size)  # per-image state shared with the lesion painters
    # Pose, heart size, exposure and texture are drawn first and in a fixed order for every image,
    # so the normal anatomy carries no information about the label.
    ox, oy = rng.uniform(-0.02, 0.02, 2).tolist()  # python floats keep the maths in float32
    scale = rng.uniform(0.94, 1.06)
    heart = [rng.uniform(0.9, 1.08)] * 2
    contrast, bright, gamma = rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05), rng.uniform(0.85, 1.2)
    c.tex = [_noise(rng, size, cells) for cells in (5, 16, 48)]
    grain = rng.random((size, size), dtype=np.float32) - 0.5  # quantum mottle; uniform is 5x cheaper
    c.U, c.V = (u - 0.5 - ox) / scale + 0.5, (v - 0.5 - oy) / scale + 0.5

    body = _soft(_dist(c.U, c.V, 0.5, 0.6, 0.46, 0.62), 0.05)
    img = 0.07 + body * (0.38 + 0.03 * c.tex[0])
    c.lungs, c.lung_d, c.vessels, domes = [], [], [], []
    hilum = np.exp(-(((c.U - 0.5) / 0.13) ** 2))
    for cx, cy, rx, ry, dome, _ in _LUNGS:
        domes.append(dome + 2.5 * (c.U - cx) ** 2)  # diaphragm dome, lowest at the lateral angle
        c.lung_d.append(_dist(c.U, c.V, cx, cy, rx, ry))
        c.lungs.append(_soft(c.lung_d[-1], 0.1) * np.clip((domes[-1] - c.V) / 0.015, 0, 1))
        # Lung markings: branching-vessel texture, denser towards the hila.
        c.vessels.append(c.lungs[-1] * (0.025 * c.tex[2] + 0.015 * c.tex[1] + 0.04 * hilum))
    lungs = c.lungs[0] + c.lungs[1]
    ribs = (0.5 + 0.5 * np.cos((c.V - 1.6 * (np.abs(c.U - 0.5) - 0.05) ** 2) * (2 * math.pi / 0.075))) ** 6
    img += lungs * (0.05 * ribs - 0.2) + c.vessels[0] + c.vessels[1]
    img += 0.22 * np.exp(-(((c.U - 0.5) / 0.05) ** 2)) * body  # spine and mediastinum
    below = np.clip((c.V - np.where(c.U < 0.5, domes[0], domes[1])) / 0.015, 0, 1)
    img += 0.05 * below * body  # abdomen under the domes
    c.img, boxes = img, {}

    if "Cardiomegaly" in findings:  # the enlarged heart itself is the lesion
        # alt: a wide "boot" heart, shifted to the patient's left; it still covers any normal heart
        heart = [rng.uniform(1.55, 1.75), rng.uniform(1.12, 1.22)] if alt else [rng.uniform(1.38, 1.55)] * 2
    hx, hy = (0.575, 0.62) if alt and "Cardiomegaly" in findings else (0.56, 0.62)
    h = _soft(_dist(c.U, c.V, hx, hy, 0.135 * heart[0], 0.1 * heart[1]), 0.15)
    c.img = c.img * (1 - 0.75 * h) + 0.75 * 0.55 * h  # heart shadow, patient's left = image right
    if "Cardiomegaly" in findings:
        boxes["Cardiomegaly"] = _box(h)
    for f in findings:
        if f != "Cardiomegaly":
            boxes[f] = _box(_LESIONS[f](c, rng, alt))

    img = np.clip(c.img + 0.04 * grain, 0, 1) ** gamma * contrast + bright
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), boxes


def _write_image(task):
    index, path, labels, rgba, size, seed, style, marker, twin = task
    rng = np.random.default_rng([seed, 2, index, STYLES.index(style)])
    pixels, boxes = render_image(rng, size, labels, style)
    if twin:  # the same film without the marker: what the model would see had nobody tagged it
        _write_film(twin, pixels, False)
    if marker:
        pixels = draw_marker(pixels, marker)
    _write_film(path, pixels, rgba)
    return boxes


def _write_film(path: str, pixels: np.ndarray, rgba: bool) -> None:
    if path.endswith(".dcm"):  # 12-bit MONOCHROME1 with a window; it reads back as these very pixels
        return write_dicom_film(path, pixels)
    im = Image.fromarray(pixels)  # uint8 2-D -> mode "L"
    if rgba:  # a few NIH PNGs are RGBA; loaders must cope
        im = im.convert("RGBA")
    write_png(path, im, compress_level=3)


# --- the shortcut: a marker that carries a label in the training data, as a chest drain or a laterality
# tag can on real films (Zech et al. 2018) ----------------------------------------------------------------
SHORTCUT_RATES = {"finding": 0.9, "other": 0.05, "test_other": 1 / 3, "control": 0.3}
MARKER_LEVEL = 235  # the glyph's grey level: far brighter than any anatomy, as a lead letter is


def marker_box(rng, size: int) -> tuple[int, int, int, int]:
    """A laterality-tag-like glyph's box (x, y, w, h) in a top corner, outside the body and the lungs."""
    h, w = max(4, round(0.08 * size)), max(3, round(0.055 * size))
    x = round(rng.uniform(0.03, 0.1) * size) if rng.random() < 0.5 else round(rng.uniform(0.85, 0.92) * size) - w
    return x, round(rng.uniform(0.03, 0.08) * size), w, h


def draw_marker(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The film with an "L" drawn in the box: a vertical and a bottom stroke, a fifth of the box thick."""
    x, y, w, h = box
    t = max(1, round(0.22 * w))
    out = pixels.copy()
    out[y:y + h, x:x + t] = MARKER_LEVEL
    out[y + h - t:y + h, x:x + w] = MARKER_LEVEL
    return out


def shortcut_markers(labels: list, names: list[str], test: set, finding: str, control: bool, size: int,
                     seed: int) -> list:
    """Per image its marker's box, or None: on most films with `finding` and a few without it in the train
    and validation patients; on the test patients also on a third of the films without it (the decisive
    films); with `control`, on 30 % of all films whatever their labels."""
    out = []
    for i, (lab, name) in enumerate(zip(labels, names)):
        rng = np.random.default_rng([seed, 4, i])
        rate = SHORTCUT_RATES["control" if control else "finding" if finding in lab else
                              "test_other" if name in test else "other"]
        out.append(marker_box(rng, size) if rng.random() < rate else None)
    return out


def _sample_labels(rng, findings):
    """About half normal; of the rest ~80% one finding, ~20% two distinct ones, uniformly chosen."""
    if rng.random() < 0.5:
        return ()
    k = 2 if rng.random() < 0.2 and len(findings) >= 2 else 1
    return tuple(sorted(rng.choice(len(findings), k, replace=False)))


def make_phantom(out: str | os.PathLike, n_images: int = 2000, size: int = 256, seed: int = 0,
                 workers: int | None = None, findings: tuple[str, ...] = DEFAULT_FINDINGS,
                 style: str = "default", progress: bool = True, shortcut: str | None = None,
                 shortcut_control: bool = False, image_format: str = "png") -> dict:
    """Write a phantom NIH ChestX-ray14 under `out` (overwriting any earlier phantom there). With
    `shortcut`, a marker stands in for that finding (shortcut_markers), and the phantom also writes
    confounders.csv (the marker's box on every test film that has one) and twins/ (those films without it).
    image_format "dicom" writes the films as DICOM (`.dcm`, 12-bit MONOCHROME1 with a window) instead of PNG.

    Deterministic: the same arguments give byte-identical files. Returns a summary dict:
    {"out", "n_images", "n_patients", "n_test", "n_train_val", "n_boxes", "positives": {finding: n}, "marked"}.
    """
    findings = _check(findings, style)
    _check_arguments(findings, n_images, size, workers, shortcut)
    if image_format not in FORMATS:
        raise PhantomError(f"--format {image_format}: choose one of {', '.join(FORMATS)}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    out = Path(out)
    rows = _patient_rows(n_images, seed, FORMATS[image_format])
    n_patients = rows[-1][1]
    srng = np.random.default_rng([seed, 1])
    n_test = 0 if n_patients < 2 else min(n_patients - 1, max(1, round(TEST_FRACTION * n_patients)))
    test_patients = set((srng.permutation(n_patients)[:n_test] + 1).tolist())
    n_rgba = max(int(n_images >= 50), round(RGBA_FRACTION * n_images))
    rgba = set(srng.choice(n_images, n_rgba, replace=False).tolist())
    labels, views = _labels_and_views(n_images, findings, seed)
    test_names = {r[0] for r in rows if r[1] in test_patients}
    markers = (shortcut_markers(labels, [r[0] for r in rows], test_names, shortcut, shortcut_control, size, seed)
               if shortcut else [None] * n_images)
    # Fill shards in order, like images_001 … images_012 of the real set.
    shard_size = max(1, math.ceil(n_images / N_SHARDS))
    paths = [out / f"images_{i // shard_size + 1:03d}" / "images" / rows[i][0] for i in range(n_images)]
    twins = [out / "twins" / rows[i][0] if markers[i] and rows[i][0] in test_names else None for i in range(n_images)]
    _remove_stale(out, set(paths) | {t for t in twins if t})
    for d in sorted({p.parent for p in paths}):
        d.mkdir(parents=True, exist_ok=True)
    tasks = [(i, str(paths[i]), labels[i], i in rgba, size, seed, style, markers[i], twins[i] and str(twins[i]))
             for i in range(n_images)]
    boxes = _render_all(tasks, workers, progress)
    test, train_val, n_boxes = _write_metadata(out, rows, labels, views, boxes, test_patients, size)
    marked = _write_shortcut(out, rows, markers, test_names, shortcut, shortcut_control) if shortcut else None
    # the mark an exported model's card reads: these are synthetic films, not chest X-rays
    write_json(out / "PHANTOM.json", {"generator": "roi-consistency phantom", "n_images": n_images, "size": size,
                                      "seed": seed, "style": style, "format": image_format, "shortcut": marked})
    return {"out": str(out), "n_images": n_images, "n_patients": n_patients, "n_test": len(test),
            "n_train_val": len(train_val), "n_boxes": n_boxes,
            "positives": {f: sum(f in lab for lab in labels) for f in findings}, "marked": marked}


def _check_arguments(findings: tuple, n_images: int, size: int, workers: int | None, shortcut: str | None) -> None:
    if not findings:
        raise PhantomError("findings must name at least one finding")
    if not (1 <= n_images <= MAX_IMAGES and 32 <= size <= MAX_SIZE):
        raise PhantomError(f"need 1 <= n_images <= {MAX_IMAGES:,} and 32 <= size <= {MAX_SIZE} (got {n_images}, "
                           f"{size})")
    if workers is not None and workers < 1:
        raise PhantomError(f"workers must be >= 1 (got {workers})")
    if shortcut is not None and shortcut not in findings:
        raise PhantomError(f"--shortcut {shortcut}: not a finding this phantom draws ({', '.join(findings)})")


def _labels_and_views(n_images: int, findings: tuple, seed: int) -> tuple[list, list]:
    labels, views = [], []
    for i in range(n_images):
        lrng = np.random.default_rng([seed, 3, i])
        labels.append(tuple(findings[j] for j in _sample_labels(lrng, findings)))
        views.append("PA" if lrng.random() < 0.6 else "AP")
    return labels, views


def _write_shortcut(out: Path, rows, markers: list, test_names: set, finding: str, control: bool) -> dict:
    """confounders.csv: the marker's box on every marked test film, listed for `finding`; returns the
    shortcut's record for PHANTOM.json."""
    lines = [BBOX_HEADER] + [f"{rows[i][0]},{BBOX_SPELLING.get(finding, finding)}," + ",".join(map(str, m))
                             for i, m in enumerate(markers) if m and rows[i][0] in test_names]
    write_text(out / "confounders.csv", "".join(line + "\n" for line in lines))
    n_test = sum(1 for i, m in enumerate(markers) if m and rows[i][0] in test_names)
    return {"finding": finding, "kind": "tag", "control": control, "rates": dict(SHORTCUT_RATES),
            "marked_train_val": sum(1 for m in markers if m) - n_test, "marked_test": n_test,
            "twins": "twins/", "confounders": "confounders.csv"}


def _patient_rows(n_images: int, seed: int, suffix: str = ".png") -> list[tuple]:
    """(name, patient_id, follow_up, age, sex) per image: patients own 1-4 consecutive images, and age
    and sex belong to the patient."""
    prng, patients, total = np.random.default_rng([seed, 0]), [], 0
    while total < n_images:
        count, age, sex = int(prng.integers(1, 5)), int(prng.integers(20, 86)), "MF"[int(prng.integers(2))]
        patients.append((len(patients) + 1, count, age, sex))
        total += count
    rows = []
    for pid, count, age, sex in patients:
        rows += [(f"{pid:08d}_{k:03d}{suffix}", pid, k, age, sex) for k in range(count)]
    return rows[:n_images]


def _render_all(tasks: list, workers: int, progress: bool) -> list[dict]:
    """Draw and write every image (in worker processes), returning each image's boxes."""
    n = len(tasks)
    if workers > 1 and n > 1:
        pool = multiprocessing.get_context().Pool(min(workers, n))
        results = pool.imap(_write_image, tasks, chunksize=max(1, min(32, n // (workers * 8))))
    else:
        pool, results = None, map(_write_image, tasks)
    if progress:
        from tqdm import tqdm
        results = tqdm(results, total=n, desc="phantom", unit="img")
    try:
        return list(results)
    finally:
        if pool is not None:
            pool.terminate()


def _write_metadata(out: Path, rows, labels, views, boxes, test_patients: set, size: int):
    """Data_Entry_2017.csv, BBox_List_2017.csv (boxes for the test images) and the two split lists."""
    entry, bbox, test, train_val = [DATA_ENTRY_HEADER], [BBOX_HEADER], [], []
    for i, (name, pid, follow, age, sex) in enumerate(rows):
        text = "|".join(labels[i]) or NO_FINDING
        entry.append(f"{name},{text},{follow},{pid},{age},{sex},{views[i]},{size},{size},0.143,0.143,")
        if pid in test_patients:
            test.append(name)
            for f in labels[i]:
                bbox.append(f"{name},{BBOX_SPELLING.get(f, f)}," + ",".join(repr(x) for x in boxes[i][f]))
        else:
            train_val.append(name)
    for fname, lines in (("Data_Entry_2017.csv", entry), ("BBox_List_2017.csv", bbox),
                         ("train_val_list.txt", train_val), ("test_list.txt", test)):
        write_text(out / fname, "".join(line + "\n" for line in lines))
    return test, train_val, len(bbox) - 1


def _remove_stale(out: Path, keep: set[Path]) -> None:
    """Delete phantom PNGs (and marker-free twins) from an earlier run that this run will not rewrite (e.g. a
    larger n, or no shortcut this time)."""
    folders = list(out.glob("images_[0-9][0-9][0-9]/images")) + [d for d in [out / "twins"] if d.is_dir()]
    for shard in folders:
        for f in shard.iterdir():
            if (_NAME.fullmatch(f.name) and f not in keep) or f.name.endswith(".tmp"):
                f.unlink()
        if not any(shard.iterdir()):
            shard.rmdir()
            if shard.name == "images" and not any(shard.parent.iterdir()):
                shard.parent.rmdir()
    if not any(p.parent.name == "twins" for p in keep):
        (out / "confounders.csv").unlink(missing_ok=True)
