"""The phantom must look like NIH ChestX-ray14 on disk and put every lesion inside its box."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from roi_consistency.data.phantom import (
    BBOX_HEADER,
    DATA_ENTRY_HEADER,
    DEFAULT_FINDINGS,
    MARKER_LEVEL,
    make_phantom,
    render_image,
)

N, SIZE = 90, 64


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("nih")
    summary = make_phantom(out, n_images=N, size=SIZE, seed=3, workers=2, progress=False)
    return out, summary


def _entries(out):
    lines = (out / "Data_Entry_2017.csv").read_text().splitlines()
    return lines[0], [line.split(",") for line in lines[1:]]


def _boxes(out):
    lines = (out / "BBox_List_2017.csv").read_text().splitlines()
    return lines[0], [line.split(",") for line in lines[1:]]


def _all_pngs(out):
    return sorted(out.glob("images_*/images/*.png"))


def test_headers_are_the_real_nih_ones(phantom):
    out, _ = phantom
    assert (out / "Data_Entry_2017.csv").read_text().splitlines()[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],") == DATA_ENTRY_HEADER
    bbox_header = (out / "BBox_List_2017.csv").read_text().splitlines()[0]
    assert bbox_header == "Image Index,Finding Label,Bbox [x,y,w,h],,," == BBOX_HEADER


def test_rows_match_files_and_names(phantom):
    out, summary = phantom
    _, rows = _entries(out)
    pngs = _all_pngs(out)
    assert len(rows) == len(pngs) == N == summary["n_images"]
    names = [r[0] for r in rows]
    assert names == sorted(names) == [p.name for p in sorted(pngs, key=lambda p: p.name)]
    for r in rows:
        assert len(r) == 12 and r[-1] == ""  # 11 values plus the trailing comma
        assert re.fullmatch(r"(\d{8})_(\d{3})\.png", r[0])
        assert int(r[0][:8]) == int(r[3]) and int(r[0][9:12]) == int(r[2])
        assert 20 <= int(r[4]) <= 85 and r[5] in ("M", "F") and r[6] in ("PA", "AP")
        assert (r[7], r[8]) == (str(SIZE), str(SIZE))
        labels = r[1].split("|")
        assert r[1] == "No Finding" or set(labels) <= set(DEFAULT_FINDINGS)
    per_patient = {}
    for r in rows:
        per_patient.setdefault(int(r[3]), []).append(int(r[2]))
    assert sorted(per_patient) == list(range(1, summary["n_patients"] + 1))
    assert all(v == list(range(len(v))) and 1 <= len(v) <= 4 for v in per_patient.values())


def test_shards_fill_in_order(phantom):
    out, _ = phantom
    shards = sorted(p.name for p in out.glob("images_*"))
    assert shards[:3] == ["images_001", "images_002", "images_003"] and len(shards) == 12
    sizes = [len(list((out / s / "images").glob("*.png"))) for s in shards]
    assert sizes[:-1] == [sizes[0]] * (len(sizes) - 1) and sizes[-1] <= sizes[0]
    first_of_each = [min(p.name for p in (out / s / "images").glob("*.png")) for s in shards]
    assert first_of_each == sorted(first_of_each)


def test_split_by_patient_and_covers_everything(phantom):
    out, summary = phantom
    test = (out / "test_list.txt").read_text().split()
    train = (out / "train_val_list.txt").read_text().split()
    assert test == sorted(test) and train == sorted(train)
    assert sorted(test + train) == sorted(p.name for p in _all_pngs(out))
    assert not {n[:8] for n in test} & {n[:8] for n in train}
    assert 0.1 < len({n[:8] for n in test}) / summary["n_patients"] < 0.3
    assert (summary["n_test"], summary["n_train_val"]) == (len(test), len(train))


def test_every_test_finding_has_one_box_inside_the_image(phantom):
    out, summary = phantom
    _, rows = _entries(out)
    test = set((out / "test_list.txt").read_text().split())
    _, boxes = _boxes(out)
    positive = [r for r in rows if r[0] in test and r[1] != "No Finding"]
    expected = sorted((r[0], f) for r in positive for f in r[1].split("|"))
    spelled = sorted((b[0], "Infiltration" if b[1] == "Infiltrate" else b[1]) for b in boxes)
    assert spelled == expected and len(boxes) == summary["n_boxes"] > 0
    for b in boxes:
        assert len(b) == 6 and b[0] in test
        x, y, w, h = map(float, b[2:])
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= SIZE and y + h <= SIZE


def test_bbox_file_spells_infiltrate(tmp_path):
    make_phantom(tmp_path, n_images=60, size=SIZE, seed=0, workers=1, progress=False,
                 findings=("Infiltration",))
    _, boxes = _boxes(tmp_path)
    assert boxes and {b[1] for b in boxes} == {"Infiltrate"}
    assert "Infiltrate," not in (tmp_path / "Data_Entry_2017.csv").read_text()


def test_images_are_grayscale_with_a_few_rgba(phantom):
    out, _ = phantom
    modes = {}
    for p in _all_pngs(out):
        with Image.open(p) as im:
            assert im.size == (SIZE, SIZE)
            modes[im.mode] = modes.get(im.mode, 0) + 1
    assert set(modes) == {"L", "RGBA"} and 1 <= modes["RGBA"] <= 3


def test_labels_are_balanced_and_about_half_normal(tmp_path):
    summary = make_phantom(tmp_path, n_images=600, size=32, seed=1, workers=2, progress=False)
    assert all(n >= 0.06 * 600 for n in summary["positives"].values())
    _, rows = _entries(tmp_path)
    normal = sum(r[1] == "No Finding" for r in rows)
    assert 0.4 < normal / 600 < 0.6
    assert any("|" in r[1] for r in rows)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = {"n_images": 60, "size": SIZE, "workers": 2, "progress": False}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_phantom(a, seed=5, **kw)
    make_phantom(b, seed=5, **{**kw, "workers": 1})  # parallelism must not change the output
    make_phantom(c, seed=6, **kw)
    shard5 = "images_005/images/" + min(p.name for p in (a / "images_005/images").glob("*.png"))
    for rel in ("Data_Entry_2017.csv", "BBox_List_2017.csv", "test_list.txt",
                "images_001/images/00000001_000.png", shard5):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    pa = sorted(a.glob("images_*/images/*.png"))[:5]
    others = [(p, c / p.relative_to(a)) for p in pa if (c / p.relative_to(a)).exists()]
    assert others and all(p.read_bytes() != q.read_bytes() for p, q in others)
    assert (a / "Data_Entry_2017.csv").read_bytes() != (c / "Data_Entry_2017.csv").read_bytes()


def test_rerun_overwrites_and_removes_stale_images(tmp_path):
    make_phantom(tmp_path, n_images=80, size=32, seed=0, workers=1, progress=False)
    make_phantom(tmp_path, n_images=30, size=32, seed=0, workers=1, progress=False)
    assert len(_all_pngs(tmp_path)) == 30
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("style", ["default", "alt"])
def test_box_region_is_brighter_or_darker_than_in_normal_images(style):
    # The same box region, relative to the rest of its image, differs between images with the finding
    # and normal images: brighter for opacities, darker for air (pneumothorax).
    def contrast(img, box):
        x, y, w, h = map(int, box)
        img = img.astype(float)
        return (img[y:y + h, x:x + w].mean() - img.mean()) / img.std()

    for finding in DEFAULT_FINDINGS:
        effect = []
        for k in range(24):
            img, boxes = render_image(np.random.default_rng([10, k]), 64, (finding,), style)
            normal, _ = render_image(np.random.default_rng([9, k]), 64, (), style)
            effect.append(contrast(img, boxes[finding]) - contrast(normal, boxes[finding]))
        t = np.mean(effect) / (np.std(effect) / np.sqrt(len(effect)))
        assert (-t if finding == "Pneumothorax" else t) > 3.0, (style, finding, t)


@pytest.mark.parametrize("style", ["default", "alt"])
def test_outside_the_box_the_image_is_the_normal_one(style):
    # The base anatomy is drawn before the lesion, so the same generator with and without a finding
    # must give the same pixels outside the box (up to the lesion's faint soft edge).
    for finding in DEFAULT_FINDINGS:
        for k in range(6):
            img, boxes = render_image(np.random.default_rng([12, k]), 128, (finding,), style)
            ref, _ = render_image(np.random.default_rng([12, k]), 128, (), style)
            x, y, w, h = map(int, boxes[finding])
            diff = np.abs(img.astype(int) - ref)
            outside = np.ones_like(diff, bool)
            outside[y:y + h, x:x + w] = False
            assert diff[outside].max() <= 8, (style, finding)
            assert diff[~outside].mean() > 3 * max(diff[outside].mean(), 0.1), (style, finding)


def test_render_image_shape_and_boxes():
    img, boxes = render_image(np.random.default_rng(0), 96, ("Nodule", "Effusion"), "default")
    assert img.shape == (96, 96) and img.dtype == np.uint8
    assert set(boxes) == {"Nodule", "Effusion"} and img.std() > 10


def test_alt_style_differs():
    for k in range(3):
        a, ba = render_image(np.random.default_rng([1, k]), SIZE, ("Mass",), "default")
        b, bb = render_image(np.random.default_rng([1, k]), SIZE, ("Mass",), "alt")
        assert not np.array_equal(a, b) and ba != bb


def test_alt_phantom_on_disk_differs(tmp_path):
    make_phantom(tmp_path / "d", n_images=12, size=32, seed=0, workers=1, progress=False)
    make_phantom(tmp_path / "a", n_images=12, size=32, seed=0, workers=1, progress=False, style="alt")
    d = (tmp_path / "d/images_001/images/00000001_000.png").read_bytes()
    assert d != (tmp_path / "a/images_001/images/00000001_000.png").read_bytes()


@pytest.mark.parametrize("kwargs", [{"style": "fancy"}, {"findings": ("Nodule", "Pneumonitis")},
                                    {"findings": ("Hernia",)}, {"findings": ()}, {"n_images": 0}])
def test_bad_arguments_raise_value_error(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_phantom(tmp_path, **{"n_images": 4, "size": 32, "progress": False, **kwargs})
    assert not list(tmp_path.iterdir())  # nothing written before validation


@pytest.fixture(scope="module")
def shortcut(tmp_path_factory):
    out = tmp_path_factory.mktemp("shortcut")
    return out, make_phantom(out, n_images=600, size=SIZE, seed=1, workers=2, progress=False, shortcut="Pneumothorax")


def _marked(out):
    """{name: True if the film carries the marker}, and the test names, from the files themselves: a marker
    is the only pixel as bright as MARKER_LEVEL."""
    test = set((out / "test_list.txt").read_text().split())
    return {p.name: bool((np.asarray(Image.open(p).convert("L")) == MARKER_LEVEL).any()) for p in _all_pngs(out)}, test


def test_the_shortcut_marker_stands_in_for_its_finding_in_training_and_not_in_the_test_set(shortcut):
    out, summary = shortcut
    marked, test = _marked(out)
    has = {e[0]: "Pneumothorax" in e[1] for e in _entries(out)[1]}
    rate = {(t, f): np.mean([marked[n] for n in marked if (n in test) == t and has[n] == f])
            for t in (False, True) for f in (False, True)}
    assert rate[False, True] > 0.75 and rate[False, False] < 0.12  # training: the marker means the finding
    assert rate[True, True] > 0.75 and 0.2 < rate[True, False] < 0.5  # test: also on films without it
    assert summary["marked"]["marked_test"] == sum(marked[n] for n in test)


def test_confounders_csv_boxes_every_marked_test_film_and_its_twin_differs_only_there(shortcut):
    out, _ = shortcut
    marked, test = _marked(out)
    lines = (out / "confounders.csv").read_text().splitlines()
    assert lines[0] == BBOX_HEADER
    rows = [ln.split(",") for ln in lines[1:]]
    assert sorted(r[0] for r in rows) == sorted(n for n in test if marked[n])
    assert {r[1] for r in rows} == {"Pneumothorax"}
    paths = {p.name: p for p in _all_pngs(out)}
    for name, _, x, y, w, h in rows[:10]:
        film = np.asarray(Image.open(paths[name]).convert("L")).astype(int)
        twin = np.asarray(Image.open(out / "twins" / name)).astype(int)
        x, y, w, h = (int(v) for v in (x, y, w, h))
        inside = np.zeros(film.shape, bool)
        inside[y:y + h, x:x + w] = True
        assert (film[~inside] == twin[~inside]).all() and (film[inside] == MARKER_LEVEL).sum() >= h
        assert (twin == MARKER_LEVEL).sum() == 0
    assert sorted(p.name for p in (out / "twins").iterdir()) == sorted(r[0] for r in rows)


def test_the_control_marker_ignores_the_labels(tmp_path):
    summary = make_phantom(tmp_path, n_images=600, size=SIZE, seed=1, workers=2, progress=False,
                           shortcut="Pneumothorax", shortcut_control=True)
    marked, _ = _marked(tmp_path)
    has = {e[0]: "Pneumothorax" in e[1] for e in _entries(tmp_path)[1]}
    with_f, without = (np.mean([marked[n] for n in marked if has[n] == f]) for f in (True, False))
    assert abs(with_f - without) < 0.12 and 0.2 < without < 0.4 and summary["marked"]["control"]
    make_phantom(tmp_path, n_images=100, size=SIZE, seed=1, workers=2, progress=False)  # again, without a shortcut
    assert not (tmp_path / "twins").exists() and not (tmp_path / "confounders.csv").exists()
