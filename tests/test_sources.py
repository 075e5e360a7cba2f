"""make-csv --dataset NAME on synthetic trees in each dataset's public layout, and a model scored on the
phantom laid out as another dataset."""
import csv

import numpy as np
import pytest
from PIL import Image

from roi_consistency.cli import main
from roi_consistency.data.boxes import read_boxes
from roi_consistency.data.dicom import write_film
from roi_consistency.data.labels import split_labels
from roi_consistency.evaluation.evaluate import evaluate_checkpoint

CHEXPERT_HEAD = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
                 "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
                 "Fracture,Support Devices")


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def chexpert_tree(root, n_patients=20):
    """CheXpert-v1.0-small: per patient a frontal film (Edema 1, Pneumonia -1 on even patients, Pleural Effusion
    0 or blank) and a lateral one; valid.csv with two patients of its own."""
    folder = root / "CheXpert-v1.0-small"
    for name, first, n in (("train", 1, n_patients), ("valid", 64541, 2)):
        lines = [CHEXPERT_HEAD]
        for p in range(first, first + n):
            for view, kind in (("view1_frontal", "Frontal"), ("view2_lateral", "Lateral")):
                image = f"CheXpert-v1.0-small/{name}/patient{p:05d}/study1/{view}.jpg"
                (root / image).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8), p % 256, np.uint8)).save(root / image)
                labels = ["", "", "", "", "", "1.0", "", "-1.0" if p % 2 == 0 else "0.0", "", "", "0.0", "", "", ""]
                lines.append(f"{image},Female,60,{kind},AP,{','.join(labels)}")
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("uncertain, pneumonia", [(None, "unknown"), ("zeros", "negative"), ("ones", "positive")])
def test_chexpert_keeps_frontal_films_its_valid_set_as_test_and_reads_uncertain_labels_as_asked(
        tmp_path, capsys, uncertain, pneumonia):
    chexpert_tree(tmp_path)
    main(["make-csv", "--dataset", "chexpert", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "out"),
          "--val-fraction", "0.25"] + (["--uncertain", uncertain] if uncertain else []))
    out = capsys.readouterr().out
    split = {s: rows(tmp_path / "out" / f"chexpert_{s}.csv") for s in ("train", "val", "test")}
    assert [len(v) for v in split.values()] == [15, 5, 2] and "20 frontal films; 20 lateral ones left out" in out
    assert all("valid/" in r["image"] for r in split["test"]) and all((tmp_path / r["image"]).is_file()
                                                                      for v in split.values() for r in v)
    patients = {s: {r["image"].split("/")[2] for r in v} for s, v in split.items()}
    assert not patients["train"] & patients["val"] and "valid patient-wise" not in out
    even = next(r for r in split["train"] if int(r["image"].split("/")[2][7:]) % 2 == 0)
    got = "positive" if "Pneumonia" in split_labels(even["labels"]) else \
        "unknown" if "Pneumonia" in split_labels(even.get("unknown")) else "negative"
    assert got == pneumonia and split_labels(even["labels"])[0] == "Edema"
    assert "chexpert: test official; val drawn patient-wise (seed 0)" in out


def test_chexpert_errors_are_one_line_and_say_where_to_get_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["make-csv", "--dataset", "chexpert", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert "no CheXpert-v1.0-small/train.csv there" in err and "stanfordaimi" in err
    chexpert_tree(tmp_path, 2)
    path = tmp_path / "CheXpert-v1.0-small" / "train.csv"
    path.write_text(path.read_text().replace("1.0,", "yes,", 1))
    with pytest.raises(SystemExit):
        main(["make-csv", "--dataset", "chexpert", "--data-root", str(tmp_path)])
    assert "train.csv line 2: label 'yes'; CheXpert's are 1, 0, -1 or blank" in capsys.readouterr().err
    for flag in (["--uncertain", "ones"], ["--test-fraction", "0.3"]):
        with pytest.raises(SystemExit):
            main(["make-csv", "--data-root", str(tmp_path)] + flag)
        assert "is for the other datasets" in capsys.readouterr().err


def vindr_row(image, name, reader, box=None):
    return [image, name, "", reader] + ([f"{v:g}" for v in box] if box else ["", "", "", ""])


def test_vindr_labels_a_finding_by_its_readers_majority_and_keeps_every_box(tmp_path, capsys):
    table = [["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]]
    table += [vindr_row("a", "Cardiomegaly", r, (1, 2, 11, 12)) for r in ("R1", "R2")]
    table += [vindr_row("a", "No finding", "R3"), vindr_row("b", "Pleural effusion", "R1", (0, 0, 5, 5))]
    table += [vindr_row("b", "No finding", r) for r in ("R2", "R3")]
    table += [vindr_row("c", "No finding", r) for r in ("R1", "R2", "R3")]
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(table)
    (tmp_path / "train").mkdir()
    for i in "abc":
        write_film(tmp_path / "train" / f"{i}.dicom", np.full((20, 16), 7, np.uint8))
    main(["make-csv", "--dataset", "vindr", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "o"),
          "--test-fraction", "0", "--val-fraction", "0"])
    films = {r["image"]: r for r in rows(tmp_path / "o" / "vindr_train.csv")}
    assert films["train/a.dicom"]["labels"] == "Cardiomegaly" and films["train/a.dicom"]["unknown"] == ""
    assert films["train/b.dicom"]["labels"] == "Normal" and films["train/b.dicom"]["unknown"] == "Pleural effusion"
    assert films["train/c.dicom"]["labels"] == "Normal" and films["train/c.dicom"]["unknown"] == ""
    boxes = read_boxes(tmp_path / "o" / "vindr_boxes.csv")
    assert boxes["train/a.dicom"] == [("Cardiomegaly", 1, 2, 10, 10)] * 2 and len(boxes) == 2
    assert [r["reader"] for r in rows(tmp_path / "o" / "vindr_boxes.csv")] == ["R1", "R2", "R1"]
    assert "boxes: 3 on 2 films (vindr_boxes.csv)" in capsys.readouterr().out
    (tmp_path / "train" / "c.dicom").unlink()
    with pytest.raises(SystemExit):
        main(["make-csv", "--dataset", "vindr", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    assert "1 of 3 images are missing under --data-root" in capsys.readouterr().err


VINDR_NAMES = {"Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural effusion", "Infiltration": "Infiltration",
               "Pneumothorax": "Pneumothorax", "Mass": "Nodule/Mass", "Nodule": "Nodule/Mass"}


def test_a_model_scored_on_the_phantom_laid_out_as_vindr_agrees_with_scoring_it_directly(phantom64, trained64,
                                                                                         tmp_path):
    """The phantom's test films as VinDr-CXR's Kaggle copy: DICOM films, VinDr's names, three readers who
    agree, the first one's boxes. make-csv --dataset vindr, then evaluate: every figure of the findings the
    model shares with VinDr equals that of the same films scored as NIH PNGs."""
    root = tmp_path / "vindr"
    (root / "train").mkdir(parents=True)
    boxes = read_boxes(phantom64["data"] / "BBox_List_2017.csv")
    table = [["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]]
    for r in rows(phantom64["test"]):
        stem = r["image"].removesuffix(".png")
        gray = np.asarray(Image.open(phantom64["images"] / r["image"]).convert("L"))  # as the model reads it
        write_film(root / "train" / f"{stem}.dicom", gray)
        for reader in ("R1", "R2", "R3"):
            named = {VINDR_NAMES[f] for f in split_labels(r["labels"])}
            table += [vindr_row(stem, n, reader) for n in sorted(named)] or [vindr_row(stem, "No finding", reader)]
        table += [vindr_row(stem, VINDR_NAMES[f], "R1", (x, y, x + w, y + h))
                  for f, x, y, w, h in boxes.get(r["image"], [])]
    with open(root / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(table)
    main(["make-csv", "--dataset", "vindr", "--data-root", str(root), "--out-dir", str(tmp_path), "--test-fraction",
          "0.999", "--val-fraction", "0"])
    opts = dict(keep_ratios=(0.1,), road_ratios=(0.1,), curve_images=0, gallery=False, n_examples=0, workers=0,
                progress=False)
    as_vindr = evaluate_checkpoint(str(trained64), str(tmp_path / "vindr_test.csv"), str(root),
                                   bbox=str(tmp_path / "vindr_boxes.csv"), out_dir=str(tmp_path / "a"), **opts)
    direct = evaluate_checkpoint(str(trained64), str(phantom64["test"]), str(phantom64["images"]),
                                 bbox=str(phantom64["data"] / "BBox_List_2017.csv"), out_dir=str(tmp_path / "b"),
                                 **opts)
    assert as_vindr["n_images"] == direct["n_images"]
    assert as_vindr["vocabulary"]["read_as"] == {"Effusion": ["Pleural effusion"]}
    shared = ("Cardiomegaly", "Effusion", "Infiltration", "Pneumothorax")
    for c in shared:
        for kind in ("crop", "drop"):
            assert as_vindr["auroc"][kind]["learned"][c] == direct["auroc"][kind]["learned"][c], (kind, c)
        assert as_vindr["auroc"]["full"][c] == direct["auroc"]["full"][c] is not None
        agree(as_vindr["calibration"]["per_class"][c], direct["calibration"]["per_class"][c])
        assert as_vindr["box_control"][c] == pytest.approx(direct["box_control"][c], rel=1e-6)  # batched otherwise
        for m in ("learned", "gradcam"):
            pointing = [e["localisation"][m]["pointing_by_class"][c] for e in (as_vindr, direct)]
            assert pointing[0] == pointing[1], (m, c)
    assert as_vindr["auroc"]["full"]["Mass"] is None  # VinDr's one Nodule/Mass label does not say which
    assert as_vindr["vocabulary"]["joined"] == {"Nodule/Mass": ["Nodule", "Mass"]}  # it is scored by the higher p
    assert as_vindr["datasets"]["trained"]["name"] == "nih" and as_vindr["datasets"]["evaluated"]["name"] == "vindr"
    html = (tmp_path / "a" / "report.html").read_text()
    assert "Trained on <b>nih</b> (<code>nih_roi_train.csv</code>) · evaluated on <b>vindr</b>" in html
    assert "Pleural effusion read as Effusion" in html and "Nodule/Mass scored by the higher probability" in html


def agree(a: dict, b: dict) -> None:
    """The same figures up to the last bits of a float32 sum: VinDr's test CSV adds a Nodule/Mass column to the
    probabilities, and numpy sums a column of a wider matrix in another order."""
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] is None and b[k] is None) or a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k


def reference_rle2mask(rle, width, height):
    """The competition's own decoder (its mask_functions.py), as the starter kernels used it: then transposed."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts, lengths = array[0::2], array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position:current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height)


def test_siims_run_length_code_decodes_as_the_competitions_own_decoder_does():
    from roi_consistency.data.sources.siim import rle_mask
    m = rle_mask("1 2 3 1", width=4, height=3)  # pixels 1, 2 and 6 in column-major order
    assert m.shape == (3, 4) and np.argwhere(m).tolist() == [[0, 2], [1, 0], [2, 0]]
    rng = np.random.default_rng(0)
    for _ in range(50):
        pairs = rng.integers(0, 9, 2 * rng.integers(1, 6))
        code = " ".join(map(str, pairs))
        if pairs[0::2].sum() + pairs[1::2].sum() <= 20 * 12 and pairs[1::2].any():  # else an error, below
            np.testing.assert_array_equal(rle_mask(code, 20, 12), reference_rle2mask(code, 20, 12).T > 0)
    for bad in ("1 2 3", "5 -1", "a b", "200 50"):
        with pytest.raises(ValueError):
            rle_mask(bad, 20, 12)


def test_siim_writes_a_mask_per_positive_film_and_a_box_per_region(tmp_path, capsys):
    from roi_consistency.data.sources.siim import rle_mask
    for i in (1, 2, 3):
        folder = tmp_path / "dicom-images-train" / f"study{i}" / "series"
        folder.mkdir(parents=True)
        write_film(folder / f"1.2.{i}.dcm", np.zeros((12, 20), np.uint8))
    region = {1: ["14 4 8 4", "150 3"], 2: ["-1"], 3: ["30 2"]}
    (tmp_path / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "".join(
        f"1.2.{i}, {code}\n" for i, codes in region.items() for code in codes))
    main(["make-csv", "--dataset", "siim", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "o"),
          "--test-fraction", "0", "--val-fraction", "0"])
    films = {r["image"]: r["labels"] for r in rows(tmp_path / "o" / "siim_train.csv")}
    assert films == {f"dicom-images-train/study{i}/series/1.2.{i}.dcm": "Pneumothorax" if i != 2 else "Normal"
                     for i in (1, 2, 3)}
    mask = np.asarray(Image.open(tmp_path / "o" / "siim_masks" / "Pneumothorax" / "1.2.1.png")) > 0
    np.testing.assert_array_equal(mask, rle_mask("14 4 8 4", 20, 12) | rle_mask("150 3", 20, 12))
    assert not (tmp_path / "o" / "siim_masks" / "Pneumothorax" / "1.2.2.png").exists()
    boxes = read_boxes(tmp_path / "o" / "siim_boxes.csv")
    assert boxes["dicom-images-train/study1/series/1.2.1.dcm"][0] == ("Pneumothorax", 1, 2, 2, 4)
    assert sum(map(len, boxes.values())) == 3


def test_rsna_names_its_target_pneumonia_and_keeps_a_box_per_opacity(tmp_path):
    (tmp_path / "stage_2_train_images").mkdir()
    for p in ("a", "b", "c"):
        write_film(tmp_path / "stage_2_train_images" / f"{p}.dcm", np.zeros((30, 30), np.uint8))
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\na,1,2,10,5,1\na,15,2,10,5,1\nb,,,,,0\nc,0,0,4,4,1\n")
    main(["make-csv", "--dataset", "rsna", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "o"),
          "--test-fraction", "0", "--val-fraction", "0"])
    films = {r["image"]: r["labels"] for r in rows(tmp_path / "o" / "rsna_train.csv")}
    assert films == {"stage_2_train_images/a.dcm": "Pneumonia", "stage_2_train_images/b.dcm": "Normal",
                     "stage_2_train_images/c.dcm": "Pneumonia"}
    assert read_boxes(tmp_path / "o" / "rsna_boxes.csv")["stage_2_train_images/a.dcm"] == [
        ("Pneumonia", 1, 2, 10, 5), ("Pneumonia", 15, 2, 10, 5)]


def test_the_google_relabels_keep_their_validation_and_test_sets(tmp_path):
    (tmp_path / "images").mkdir()
    head = "Image Index,Patient ID,Fracture,Pneumothorax,Airspace opacity,Nodule or mass\n"
    for split, films in (("validation", ("1_000.png", "1_001.png")), ("test", ("2_000.png",))):
        lines = [f"{f},{f[0]},NO,{'YES' if f == '1_001.png' else 'NO'},YES,NO\n" for f in films]
        (tmp_path / f"four_findings_expert_labels_{split}_labels.csv").write_text(head + "".join(lines))
        for f in films:
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / f)
    main(["make-csv", "--dataset", "nih-google", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    split = {s: rows(tmp_path / "o" / f"nih-google_{s}.csv") for s in ("train", "val", "test")}
    assert split["train"] == [] and [r["image"] for r in split["test"]] == ["images/2_000.png"]
    assert [r["labels"] for r in split["val"]] == ["Airspace opacity", "Airspace opacity|Pneumothorax"]


def test_padchest_keeps_frontal_labelled_films_and_splits_by_patient(tmp_path, capsys):
    head = "ImageID,ImageDir,PatientID,Projection,Labels\n"
    lines = []
    for i in range(12):
        labels = ["['normal']", "['pleural effusion', ' cardiomegaly']", "['exclude']", "nan"][i % 4]
        lines.append(f"{i}.png,{i % 2},p{i // 2},{'L' if i == 11 else 'PA'},\"{labels}\"\n")
        (tmp_path / str(i % 2)).mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / str(i % 2) / f"{i}.png")
    (tmp_path / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv").write_text(head + "".join(lines))
    main(["make-csv", "--dataset", "padchest", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "o"),
          "--test-fraction", "0.34", "--val-fraction", "0"])
    out = capsys.readouterr().out
    assert "6 frontal films; left out: excluded or suboptimal 3, no labels 2, not frontal 1" in out
    split = {s: rows(tmp_path / "o" / f"padchest_{s}.csv") for s in ("train", "val", "test")}
    films = {r["image"]: r["labels"] for v in split.values() for r in v}
    assert films["0/0.png"] == "Normal" and films["1/1.png"] == "pleural effusion|cardiomegaly" and len(films) == 6
    patients = [{r["image"].split("/")[1].split(".")[0] for r in split[s]} for s in ("train", "test")]
    assert not {int(i) // 2 for i in patients[0]} & {int(i) // 2 for i in patients[1]}
    assert "test and val drawn patient-wise (seed 0)" in out


def test_bad_masks_and_bad_run_length_codes_are_one_line(phantom64, trained64, tmp_path):
    from roi_consistency.data.sources.siim import rle_mask
    from roi_consistency.errors import UserError
    for code, message in (("3 0 0 0", "no pixel"), ("99999999999999999999 1", "not whole numbers"),
                          ("9223372036854775000 5 9223372036854775000 5", "runs past")):
        with pytest.raises(ValueError, match=message):
            rle_mask(code, 20, 12)
    name = rows(phantom64["test"])[0]["image"]
    folder = tmp_path / "m" / "Effusion"
    folder.mkdir(parents=True)
    for content, message in ((np.ones((10, 10), np.uint8), "is 10x10 px but its film"), (None, "could not be read")):
        if content is None:
            (folder / name).write_bytes(b"not a png")
        else:
            Image.fromarray(content).save(folder / name)
        with pytest.raises(UserError, match=message):
            evaluate_checkpoint(str(trained64), str(phantom64["test"]), str(phantom64["images"]),
                                out_dir=str(tmp_path / "e"), masks=str(tmp_path / "m"), workers=0, progress=False)
