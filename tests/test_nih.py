"""CSV building, unify and download on small metadata made here (never ../shared)."""
import csv
import os
import random

import pytest

from roi_consistency import cli
from roi_consistency.data import kaggle, nih
from roi_consistency.errors import UserError

HEADER_2017 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
FINDS = ["No Finding", "Effusion", "Mass|Nodule", "Cardiomegaly", "No Finding", "Hernia|Effusion"]


def write_metadata(root, n_patients=40, trailing_comma=True, test_every=4, seed=1):
    """A small NIH-style metadata set: n_patients with 1-3 images each; every 4th patient is test."""
    rng = random.Random(seed)
    rows, train_val, test = [], [], []
    for pid in range(1, n_patients + 1):
        for fu in range(rng.randint(1, 3)):
            name = f"{pid:08d}_{fu:03d}.png"
            labels = rng.choice(FINDS)
            rows.append(f"{name},{labels},{fu},{pid},50,M,PA,64,64,0.14,0.14")
            (test if pid % test_every == 0 else train_val).append(name)
    header = HEADER_2017 if trailing_comma else HEADER_2017[:-1]
    suffix = "," if trailing_comma else ""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "Data_Entry_2017.csv"), "w") as fh:
        fh.write(header + "\n" + "".join(r + suffix + "\n" for r in rows))
    for fname, names in (("train_val_list.txt", train_val), ("test_list.txt", test)):
        with open(os.path.join(root, fname), "w") as fh:
            fh.write("\n".join(sorted(names)) + "\n")
    images = os.path.join(root, "images")
    os.makedirs(images, exist_ok=True)
    for r in rows:
        open(os.path.join(images, r.split(",")[0]), "wb").close()
    return rows, train_val, test


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize("trailing_comma", [True, False])
def test_make_csv_official_split_both_headers(tmp_path, trailing_comma):
    rows, train_val, test = write_metadata(tmp_path / "nih", trailing_comma=trailing_comma)
    summary = nih.make_csv(str(tmp_path / "nih"), out_dir=str(tmp_path / "out"), val_fraction=0.2, seed=3)
    out = {s: read_rows(tmp_path / "out" / f"nih_roi_{s}.csv") for s in nih.SPLITS}
    for s in nih.SPLITS:
        assert out[s][0] == ["image", "labels"]
    assert sorted(r[0] for r in out["test"][1:]) == sorted(test)
    assert sorted(r[0] for r in out["train"][1:] + out["val"][1:]) == sorted(train_val)
    patients = {s: {r[0][:8] for r in out[s][1:]} for s in nih.SPLITS}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]
    # 30 train_val patients, 20% of them for validation
    assert len(patients["val"]) == round(0.2 * len(patients["train"] | patients["val"]))
    labels = {r[0]: r[1] for s in nih.SPLITS for r in out[s][1:]}
    source = {r.split(",")[0]: r.split(",")[1] for r in rows}
    for name, text in source.items():
        expected = {"No Finding": "Normal", "Mass|Nodule": "Mass|Nodule",
                    "Hernia|Effusion": "Effusion|Hernia"}.get(text, text)
        assert labels[name] == expected
    assert summary["test"]["rows"] == len(test)
    assert summary["train"]["rows"] + summary["val"]["rows"] == len(train_val)


def test_val_split_is_deterministic_for_a_seed(tmp_path):
    write_metadata(tmp_path / "nih", n_patients=80)
    entries = nih.read_data_entry(tmp_path / "nih" / "Data_Entry_2017.csv")
    tv = nih.read_list(tmp_path / "nih" / "train_val_list.txt")
    te = nih.read_list(tmp_path / "nih" / "test_list.txt")
    a = nih.build_splits(entries, tv, te, 0.25, seed=0)
    b = nih.build_splits(entries, tv, te, 0.25, seed=0)
    c = nih.build_splits(entries, tv, te, 0.25, seed=1)
    assert a == b
    assert [e.image for e in a["val"]] != [e.image for e in c["val"]]


def test_patient_in_both_official_lists_is_refused():
    e = [nih.Entry("00000001_000.png", (), "1"), nih.Entry("00000001_001.png", ("Mass",), "1")]
    with pytest.raises(UserError, match="patient"):
        nih.build_splits(e, ["00000001_000.png"], ["00000001_001.png"])


def test_unknown_finding_names_the_row(tmp_path):
    write_metadata(tmp_path / "nih", n_patients=3)
    path = tmp_path / "nih" / "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(lines[2].split(",")[1], "Effusion|Pneumonitis", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"line 3 .*Pneumonitis"):
        nih.read_data_entry(path)


def test_missing_images_error_or_skip(tmp_path, capsys):
    rows, train_val, test = write_metadata(tmp_path / "nih")
    gone = [test[0], train_val[0]]
    for name in gone:
        os.remove(tmp_path / "nih" / "images" / name)
    with pytest.raises(UserError, match=r"2 images .* missing.*" + gone[0].replace(".", r"\.")):
        nih.make_csv(str(tmp_path / "nih"), out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "nih_roi_train.csv").exists()
    summary = nih.make_csv(str(tmp_path / "nih"), out_dir=str(tmp_path / "out"), skip_missing=True)
    assert "warning: 2 images" in capsys.readouterr().err
    assert summary["test"]["rows"] == len(test) - 1


def test_make_csv_cli_prints_summary(tmp_path, capsys):
    write_metadata(tmp_path / "nih")
    cli.main(["make-csv", "--data-root", str(tmp_path / "nih"), "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "rows" in out and "patients" in out and "Effusion" in out and "train+val" in out


# ------------------------------------------------------------------------------------------ unify

def make_shards(root, names_per_shard):
    for i, names in enumerate(names_per_shard, start=1):
        d = root / f"images_{i:03d}" / "images"
        d.mkdir(parents=True)
        for n in names:
            (d / n).write_bytes(n.encode())


def test_unify_links_idempotent_and_repairs(tmp_path):
    make_shards(tmp_path, [["a.png", "b.png"], ["c.png"]])
    s = nih.unify(str(tmp_path), progress=False)
    assert (s.total, s.created, s.repaired) == (3, 3, 0)
    flat = tmp_path / "images"
    assert sorted(os.listdir(flat)) == ["a.png", "b.png", "c.png"]
    assert (flat / "c.png").read_bytes() == b"c.png" and (flat / "c.png").is_symlink()
    s = nih.unify(str(tmp_path), progress=False)
    assert (s.created, s.repaired, s.unchanged) == (0, 0, 3)
    # a broken link (points nowhere) and a deleted link are both made good again
    (flat / "a.png").unlink()
    (flat / "b.png").unlink()
    os.symlink(tmp_path / "nowhere.png", flat / "b.png")
    s = nih.unify(str(tmp_path), progress=False)
    assert (s.created, s.repaired, s.unchanged) == (1, 1, 1)
    assert (flat / "b.png").read_bytes() == b"b.png"
    assert not [n for n in os.listdir(flat) if n.endswith(".tmp")]


def test_unify_conflict_names_both_files(tmp_path):
    make_shards(tmp_path, [["x.png"], []])
    other = tmp_path / "images_002" / "images" / "x.png"
    other.write_bytes(b"different")
    with pytest.raises(UserError) as err:
        nih.unify(str(tmp_path), progress=False)
    assert "images_001" in str(err.value) and "images_002" in str(err.value)


def test_unify_without_shards_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="images_"):
        nih.unify(str(tmp_path), progress=False)


# --------------------------------------------------------------------------------------- download

def test_download_offline_is_a_clean_error(monkeypatch, capsys):
    monkeypatch.setattr(kaggle, "reachable", lambda *a, **k: False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["download"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nih-chest-xrays/data" in err and "--data-root" in err
    assert "Traceback" not in err


def test_download_kagglehub_failure_is_a_clean_error(monkeypatch):
    import kagglehub

    def boom(handle):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")
    monkeypatch.setattr(kaggle, "reachable", lambda *a, **k: True)
    monkeypatch.setattr(kagglehub, "dataset_download", boom)
    with pytest.raises(UserError, match="--data-root"):
        nih.download()


def test_download_dest_links_result(monkeypatch, tmp_path, capsys):
    import kagglehub
    cache = tmp_path / "cache" / "versions" / "3"
    cache.mkdir(parents=True)
    monkeypatch.setattr(kaggle, "reachable", lambda *a, **k: True)
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle: str(cache))
    cli.main(["download", "--dest", str(tmp_path / "nih")])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "nih")
    assert (tmp_path / "nih").resolve() == cache.resolve()


def test_download_of_another_dataset_uses_its_kaggle_copy_or_says_where_to_get_it(monkeypatch, tmp_path, capsys):
    import kagglehub
    asked = []
    monkeypatch.setattr(kaggle, "reachable", lambda *a, **k: True)
    monkeypatch.setattr(kagglehub, "competition_download", lambda handle: asked.append(("c", handle)) or str(tmp_path))
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle: asked.append(("d", handle)) or str(tmp_path))
    cli.main(["download", "--dataset", "vindr"])
    cli.main(["download", "--dataset", "siim"])
    assert asked == [("c", "vinbigdata-chest-xray-abnormalities-detection"),
                     ("d", "jesperdramsch/siim-acr-pneumothorax-segmentation-data")]
    assert capsys.readouterr().out.splitlines() == [str(tmp_path)] * 2
    for name, where in (("chexpert", "stanfordaimi"), ("padchest", "bimcv"), ("nih-google", "cloud.google.com")):
        with pytest.raises(SystemExit):
            cli.main(["download", "--dataset", name])
        err = capsys.readouterr().err
        assert f"{name} is not downloaded by this tool" in err and where in err and "--data-root" in err
