"""Any dataset's findings: a model learns the names its training CSV gives, in any vocabulary, and a label
marked unknown is left out of training and of every figure, never read as negative."""
import csv
import math

import numpy as np
import pytest
import torch

from roi_consistency.cli import main
from roi_consistency.data.labels import FINDINGS, split_labels
from roi_consistency.errors import UserError
from roi_consistency.evaluation.evaluate import evaluate_checkpoint
from roi_consistency.evaluation.metrics import per_class_auroc
from roi_consistency.infer import infer_csv
from roi_consistency.model.config import config
from roi_consistency.model.trained import checkpoint_config
from roi_consistency.training.train import fit

RENAMED = {f: f"finding {i:02d}" for i, f in enumerate(FINDINGS)}  # sorts as NIH's order does


def rewrite(src, dst, relabel):
    """A copy of an image,labels CSV with an unknown column: relabel(row number, findings) -> (labels, unknown)."""
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(dst, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "labels", "unknown"])
        for i, row in enumerate(rows):
            labels, unknown = relabel(i, split_labels(row["labels"]))
            w.writerow([row["image"], "|".join(labels) or "Normal", "|".join(unknown)])
    return str(dst)


def small(phantom64, train, val, save, **settings):
    """trained64's settings (conftest.py) on other CSVs."""
    return config(**{**dict(train_csv=train, val_csv=val, image_root=str(phantom64["images"]), img_size=48,
                            backbone="resnet18", pretrained=False, batch_size=16, accum_steps=1, epochs=1,
                            mask_epochs=1, lr=1e-3, workers=0, save=str(save)), **settings})


def test_the_same_films_under_other_names_train_the_same_model(phantom64, trained64, tmp_path):
    """Nothing assumes NIH's 14: renamed, with --classes giving the new names in the same order, the run is
    trained64 to the bit, and the checkpoint speaks the new names."""
    csvs = [rewrite(phantom64[s], tmp_path / f"{s}.csv", lambda i, f: ([RENAMED[n] for n in f], []))
            for s in ("train", "val")]
    fit(small(phantom64, *csvs, tmp_path / "renamed.pt", classes=list(RENAMED.values())))
    nih, renamed = (torch.load(p, map_location="cpu", weights_only=True) for p in (trained64, tmp_path / "renamed.pt"))
    assert renamed["classes"] == list(RENAMED.values())
    for part in ("backbone", "mask_net"):
        assert all(torch.equal(nih[part][k], renamed[part][k]) for k in nih[part])
    assert renamed["thresholds"]["values"] == {RENAMED[c]: v for c, v in nih["thresholds"]["values"].items()}


def test_training_leaves_unknown_labels_out_and_says_which(phantom64, tmp_path, capsys):
    """Effusion ("finding 02") unknown on every other film; without --classes a CSV of names of its own
    learns the findings it names, alphabetically."""
    def relabel(i, f):
        return [RENAMED[n] for n in f if n != "Effusion" or i % 2], [RENAMED["Effusion"]] if i % 2 == 0 else []
    csvs = [rewrite(phantom64[s], tmp_path / f"{s}.csv", relabel) for s in ("train", "val")]
    result = fit(small(phantom64, *csvs, tmp_path / "u.pt", mask_epochs=0))
    ck = torch.load(tmp_path / "u.pt", map_location="cpu", weights_only=True)
    rows = list(csv.DictReader(open(csvs[0])))
    named = {n for row in rows for col in ("labels", "unknown") for n in split_labels(row[col])}
    assert ck["classes"] == sorted(named) and len(named) == 6
    assert all(math.isfinite(v) for v in ck["history"][-1].values() if isinstance(v, float))
    n_unknown = sum(1 for row in rows if row["unknown"])
    assert f"unknown on finding 02 {n_unknown:,} film(s)" in capsys.readouterr().out
    assert result["metrics"]["auroc"]["finding 02"] is not None


def test_evaluation_scores_each_finding_on_the_films_labelled_for_it(phantom64, trained64, tmp_path):
    """Effusion unknown on every third test film, Pneumothorax on all of them (a dataset that does not label
    it): AUROC, calibration and preds.json leave exactly those out."""
    def relabel(i, f):
        return [n for n in f if n != "Pneumothorax" and (n != "Effusion" or i % 3)], \
            ["Pneumothorax"] + (["Effusion"] if i % 3 == 0 else [])
    test = rewrite(phantom64["test"], tmp_path / "test.csv", relabel)
    m = evaluate_checkpoint(str(trained64), test, str(phantom64["images"]), out_dir=str(tmp_path / "eval"),
                            keep_ratios=(0.1,), road_ratios=(0.1,), curve_images=0, gallery=False, n_examples=0,
                            workers=0, progress=False)
    preds = infer_csv(str(trained64), test, str(phantom64["images"]), str(tmp_path / "p.json"), workers=0,
                      progress=False)["predictions"]
    assert [p.get("unknown") for p in preds[:3]] == [["Effusion", "Pneumothorax"], ["Pneumothorax"], ["Pneumothorax"]]
    classes = m["classes"]
    y = np.array([[np.nan if c in p.get("unknown", ()) else c in p["labels"] for c in classes] for p in preds])
    p_full = np.array([[p["prob_full"][c] for c in classes] for p in preds])
    known = ~np.isnan(y[:, classes.index("Effusion")])
    want = per_class_auroc(y[known], p_full[known], classes)["Effusion"]
    assert m["auroc"]["full"]["Effusion"] == pytest.approx(want, abs=1e-6)
    assert want != pytest.approx(per_class_auroc(np.nan_to_num(y), p_full, classes)["Effusion"], abs=1e-6)
    assert m["auroc"]["full"]["Pneumothorax"] is None
    cal = m["calibration"]["per_class"]
    assert cal["Pneumothorax"]["n_unknown"] == len(preds) and cal["Pneumothorax"]["ece"] is None
    assert cal["Effusion"]["n_unknown"] == (~known).sum()
    assert "Pneumothorax" not in m["calibration"]["mean_ece_over"]
    assert "NaN" not in (tmp_path / "eval" / "metrics.json").read_text()


def test_the_classes_flag_is_checked_and_a_resume_keeps_its_findings(phantom64, tmp_path, capsys):
    save = tmp_path / "c.pt"
    common = ["train", "--train-csv", str(phantom64["train"]), "--val-csv", str(phantom64["val"]), "--image-root",
              str(phantom64["images"]), "--backbone", "resnet18", "--no-pretrained", "--img-size", "32",
              "--workers", "0", "--save", str(save), "--max-steps", "1"]
    with pytest.raises(SystemExit):
        main(common + ["--classes", "Effusion,Effusion"])
    assert "--classes: 'Effusion' is listed twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(common + ["--classes", "Effusion,Hernia"])  # the phantom has no Hernia: nothing to learn it from
    assert "never names Hernia, which --classes asks the model to learn" in capsys.readouterr().err
    main(common + ["--classes", "Effusion,Mass"])
    assert torch.load(save, weights_only=True)["classes"] == ["Effusion", "Mass"]
    assert "findings: 2: Effusion, Mass" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(common + ["--classes", "Mass", "--resume", "--max-steps", "2"])
    assert "learns Effusion, Mass; a resumed run keeps its findings" in capsys.readouterr().err


# the phantom's findings as other datasets spell them (CheXpert, PadChest): the common vocabulary reads them back
SPELLED = {"Effusion": "Pleural Effusion", "Infiltration": "infiltrates", "Cardiomegaly": "cardiomegaly",
           "Mass": "pulmonary mass", "Nodule": "nodule", "Pneumothorax": "Pneumothorax"}


def test_a_model_scored_on_the_same_films_in_another_vocabulary_gives_the_same_figures(phantom64, trained64, tmp_path):
    """The phantom's test films and boxes relabelled in other datasets' spellings, with a finding the model
    does not have on some films: every figure of the findings both share is the direct evaluation's; the
    model's findings the CSV never names are unknown, not negative."""
    test = rewrite(phantom64["test"], tmp_path / "test.csv",
                   lambda i, f: ([SPELLED[n] for n in f] + (["Support Devices"] if i % 4 == 0 else []), []))
    boxes = tmp_path / "boxes.csv"
    lines = (phantom64["data"] / "BBox_List_2017.csv").read_text().splitlines()
    boxes.write_text("\n".join([lines[0]] + [",".join([r[0], SPELLED[split_labels(r[1])[0]], *r[2:]])
                                             for r in (line.split(",") for line in lines[1:])]) + "\n")
    opts = dict(keep_ratios=(0.1,), road_ratios=(0.1,), curve_images=0, gallery=False, n_examples=0, workers=0,
                progress=False)
    direct = evaluate_checkpoint(str(trained64), str(phantom64["test"]), str(phantom64["images"]),
                                 bbox=str(phantom64["data"] / "BBox_List_2017.csv"), out_dir=str(tmp_path / "a"),
                                 **opts)
    other = evaluate_checkpoint(str(trained64), test, str(phantom64["images"]), bbox=str(boxes),
                                out_dir=str(tmp_path / "b"), **opts)
    assert other["vocabulary"]["read_as"] == {c: [s] for c, s in SPELLED.items() if s != c}
    assert other["vocabulary"]["unscored"] == ["Support Devices"]
    assert other["vocabulary"]["unlabelled"] == [c for c in FINDINGS if c not in SPELLED]
    assert direct["vocabulary"] is None
    for c in SPELLED:
        assert other["auroc"]["full"][c] == direct["auroc"]["full"][c]
        assert other["calibration"]["per_class"][c] == direct["calibration"]["per_class"][c]
    for key in ("auroc", "mean_auroc", "faithfulness", "road", "localisation", "box_control"):
        assert other[key] == direct[key], key
    assert other["calibration"]["mean_ece"] == direct["calibration"]["mean_ece"]
    assert other["calibration"]["per_class"]["Hernia"]["n_unknown"] == other["n_images"]


def test_the_fill_is_drawn_from_films_without_a_finding_when_every_film_has_one_unknown(phantom64, tmp_path):
    """A finding the dataset does not label (unknown on every film) leaves the normal films normal."""
    from roi_consistency.data.dataset import ImageCSVDataset, normal_mean_image
    path = rewrite(phantom64["val"], tmp_path / "v.csv", lambda i, f: (f, ["Hernia"]))
    ds, plain = (ImageCSVDataset(p, phantom64["images"], 32, list(FINDINGS)) for p in (path, phantom64["val"]))
    assert np.isnan(ds.labels[:, FINDINGS.index("Hernia")]).all()
    assert torch.equal(normal_mean_image(ds), normal_mean_image(plain))


def test_weights_of_other_findings_start_a_fresh_head_and_a_saved_config_must_name_its_findings(
        phantom64, trained64, tmp_path, capsys):
    csvs = [rewrite(phantom64[s], tmp_path / f"{s}.csv", lambda i, f: ([RENAMED[n] for n in f], []))
            for s in ("train", "val")]
    names = tuple(RENAMED.values())  # 14 findings, as trained64's head has: it would load by shape alone
    fit(small(phantom64, *csvs, tmp_path / "w.pt", weights=str(trained64), classes=names, max_steps=1))
    assert "scored Atelectasis, Cardiomegaly" in capsys.readouterr().out
    ck = torch.load(tmp_path / "w.pt", map_location="cpu", weights_only=True)
    nih = torch.load(trained64, map_location="cpu", weights_only=True)
    assert ck["classes"] == list(names)  # a tuple from Python is stored as the list a checkpoint holds
    assert not torch.equal(ck["backbone"]["fc.bias"], nih["backbone"]["fc.bias"])
    with pytest.raises(UserError, match="--epochs 0 trains only the mask, against the classifier in --weights"):
        fit(small(phantom64, *csvs, tmp_path / "m.pt", weights=str(trained64), classes=names, epochs=0))
    with pytest.raises(UserError, match="names no findings"):
        checkpoint_config({"config": {}}, "old.pt")


def test_a_joined_column_is_the_higher_logit_and_its_maps_explain_the_more_probable_class(trained64):
    """ROIModel.join: the column's logit is the higher of its classes' on every input, and the learned map
    and Grad-CAM of it are those of the class that is higher on the image."""
    from roi_consistency.evaluation.explainers import gradcam_maps
    from roi_consistency.model.trained import load_trained
    model, cfg = load_trained(str(trained64), torch.device("cpu"))
    n, xn = len(cfg.data.classes), model.normalize(torch.rand(8, 1, 48, 48, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        before = model.backbone(xn)
    # two classes each higher on some of the images, so that the map must follow the image
    a, b = next((a, b) for a in range(n) for b in range(a + 1, n) if 0 < (before[:, a] > before[:, b]).sum() < 8)
    model.join({n: [a, b]})
    with torch.no_grad():
        after = model.backbone(xn)
    assert torch.equal(after[:, :n], before) and torch.equal(after[:, n], before[:, [a, b]].amax(1))
    part = torch.where(before[:, a] > before[:, b], a, b)
    joined = torch.full((8,), n)
    assert torch.equal(model.explain(xn, joined).maps, model.explain(xn, part).maps)
    assert torch.allclose(gradcam_maps(model.backbone, xn, joined.tolist()),
                          gradcam_maps(model.backbone, xn, part.tolist()), atol=1e-6)


def test_a_dataset_that_labels_nodule_and_mass_as_one_is_scored_by_the_higher_probability(
        phantom64, trained64, tmp_path):
    """VinDr's one 'Nodule/Mass' label, and its boxes, against a model with Nodule and Mass apart: the label's
    AUROC is that of the higher of the two probabilities, the model's own two are unknown there, and the
    mapping says so."""
    def one(f):
        return [n for n in f if n not in ("Nodule", "Mass")] + (["Nodule/Mass"] if {"Nodule", "Mass"} & set(f) else [])
    test = rewrite(phantom64["test"], tmp_path / "test.csv", lambda i, f: (one(f), []))
    boxes = tmp_path / "boxes.csv"
    lines = (phantom64["data"] / "BBox_List_2017.csv").read_text().splitlines()
    boxes.write_text("\n".join([lines[0]] + [",".join([r[0], one([r[1]])[0], *r[2:]])
                                             for r in (line.split(",") for line in lines[1:])]) + "\n")
    m = evaluate_checkpoint(str(trained64), test, str(phantom64["images"]), bbox=str(boxes),
                            out_dir=str(tmp_path / "eval"), keep_ratios=(0.1,), road_ratios=(0.1,), curve_images=0,
                            n_examples=2, workers=0, progress=False)
    preds = infer_csv(str(trained64), str(phantom64["test"]), str(phantom64["images"]), str(tmp_path / "p.json"),
                      workers=0, progress=False)["predictions"]
    y = np.array([[bool({"Nodule", "Mass"} & set(p["labels"]))] for p in preds], np.float32)
    p_max = np.array([[max(p["prob_full"]["Nodule"], p["prob_full"]["Mass"])] for p in preds])
    assert 0 < y.sum() < len(y)
    assert m["auroc"]["full"]["Nodule/Mass"] == pytest.approx(per_class_auroc(y, p_max, ["x"])["x"], abs=1e-6)
    assert m["classes"] == list(FINDINGS) + ["Nodule/Mass"]
    assert m["vocabulary"]["joined"] == {"Nodule/Mass": ["Nodule", "Mass"]}
    assert {"Nodule", "Mass"} <= set(m["vocabulary"]["unlabelled"]) and m["auroc"]["full"]["Mass"] is None
    assert m["localisation"]["learned"]["pointing_by_class"]["Nodule/Mass"] is not None
    assert m["calibration"]["per_class"]["Nodule/Mass"]["ece"] is not None
    assert "scored by the higher probability of Nodule and Mass" in (tmp_path / "eval" / "report.html").read_text()


def test_the_common_vocabulary_joins_a_finding_the_model_scores_in_parts_only_where_asked():
    from roi_consistency.data.vocabulary import match
    named = ["Pleural effusion", "Nodule/Mass", "Aortic enlargement"]  # VinDr's spellings
    m = match(list(FINDINGS), named)
    assert m.reads["Effusion"] == ["Pleural effusion"] and m.unscored == ["Nodule/Mass", "Aortic enlargement"]
    j = match(list(FINDINGS), named, join=True)
    assert j.joined == {"Nodule/Mass": ["Nodule", "Mass"]} and j.unscored == ["Aortic enlargement"]
    assert "'Nodule/Mass' scored by the higher probability of 'Nodule' and 'Mass'" in j.describe()
    assert match(["Effusion", "Nodule"], named, join=True).joined == {}  # without Mass, no join
    own = match(["Effusion", "Nodule/Mass"], ["Nodule", "Mass", "Effusion"], join=True)
    assert own.reads["Nodule/Mass"] == ["Nodule", "Mass"] and not own.joined
