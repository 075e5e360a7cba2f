"""Operating points and calibration: thresholds chosen on validation, carried by the checkpoint into
preds.json, and evaluate's ECE, reliability and sensitivity/specificity."""
import json

import numpy as np
import pytest
import torch

from roi_consistency import cli
from roi_consistency.evaluation import metrics as M
from roi_consistency.evaluation.calibrate import calibrate_checkpoint
from roi_consistency.evaluation.thresholds import called
from roi_consistency.infer import infer_csv


def test_youden_and_f1_pick_different_points_and_an_undefined_class_gets_none():
    # negatives at .4 (x3) and .2 (x8), positives at .5 and .3: sensitivity + specificity peaks at .3 (catch
    # both), F1 at .5 (no false positives)
    p = np.array([0.5, 0.3] + [0.4] * 3 + [0.2] * 8)
    y = np.array([1, 1] + [0] * 11)
    yy, pp = np.stack([y, np.zeros_like(y)], 1), np.stack([p, p], 1)
    assert M.choose_thresholds(yy, pp, ["a", "b"], "youden") == {"a": pytest.approx(0.3), "b": None}
    assert M.choose_thresholds(yy, pp, ["a", "b"], "f1")["a"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="youden"):
        M.choose_thresholds(yy, pp, ["a", "b"], "accuracy")


def test_a_finding_is_called_at_its_threshold_never_when_undefined_and_at_half_without_thresholds():
    p = np.array([[0.3, 0.99, 0.5], [0.29, 0.0, 0.49]])
    th = {"values": {"a": 0.3, "b": None}}  # c absent: never called either
    assert called(p, ["a", "b", "c"], th).tolist() == [[True, False, False], [False, False, False]]
    assert called(p, ["a", "b", "c"], None).tolist() == [[False, True, True], [False, False, False]]


def test_ece_is_zero_when_calibrated_and_the_gap_when_not():
    rng = np.random.default_rng(0)
    p = np.repeat([0.05, 0.35, 0.65, 0.95], 2000)
    y = rng.random(len(p)) < p  # drawn at exactly the stated rates
    cal = M.calibration_bins(y, p)
    assert cal["ece"] < 0.02 and len(cal["count"]) == 15 and sum(cal["count"]) == len(p)
    assert cal["confidence"][0] == pytest.approx(0.05) and cal["frequency"][1] is None  # an empty bin
    over = M.calibration_bins(np.zeros(100), np.full(100, 0.9))
    assert over["ece"] == pytest.approx(0.9)
    counts = M.resample_counts(100, n=200, seed=0)
    assert M.resampled_ece(np.zeros(100), np.full(100, 0.9), counts) == pytest.approx([0.9, 0.9])  # a constant
    lo, hi = M.resampled_ece(y.astype(float), p, M.resample_counts(len(p), n=200))
    assert 0 <= lo < hi < 0.05


def test_sensitivity_and_specificity_at_a_threshold():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.1, 0.1, 0.3, 0.05])
    op = M.operating_point(y, p, 0.6, M.resample_counts(len(y), n=300))
    assert op["sensitivity"] == pytest.approx(0.75) and op["specificity"] == pytest.approx(0.8)
    assert op["n_pos"] == 4 and op["n_neg"] == 5
    assert op["sensitivity_ci95"][0] <= 0.75 <= op["sensitivity_ci95"][1]


def test_thresholds_round_trip_from_training_through_the_checkpoint_into_preds_json(trained64, phantom64, tmp_path):
    ck = torch.load(trained64, weights_only=True)
    th = ck["thresholds"]
    assert th["rule"] == "youden" and th["csv"] == str(phantom64["val"]) and th["step"] == ck["step"]
    assert set(th["values"]) == set(ck["classes"]) and th["values"]["Effusion"] is not None
    # the stored thresholds are those of these weights: choosing again on the same CSV finds the same ones
    again = calibrate_checkpoint(str(trained64), str(phantom64["val"]), str(phantom64["images"]),
                                 out=str(tmp_path / "again.pt"), workers=0, progress=False)
    for c, t in th["values"].items():
        assert (t is None and again["values"][c] is None) or again["values"][c] == pytest.approx(t, abs=1e-5), c
    preds = infer_csv(str(trained64), str(phantom64["test"]), str(phantom64["images"]), str(tmp_path / "p.json"),
                      workers=0, progress=False)
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["thresholds"]["values"] == th["values"]
    called = 0
    for rec in preds["predictions"]:
        want = [c for c in ck["classes"] if th["values"][c] is not None and rec["prob_full"][c] >= th["values"][c]]
        assert rec["positive"] == want
        called += len(want)
    assert 0 < called < len(preds["predictions"]) * len(ck["classes"])


def test_calibrate_fills_a_checkpoint_without_thresholds(trained64, phantom64, tmp_path, capsys):
    bare = tmp_path / "bare.pt"
    torch.save({**torch.load(trained64, weights_only=True), "thresholds": None}, bare)
    preds = infer_csv(str(bare), str(phantom64["test"]), str(phantom64["images"]), str(tmp_path / "p.json"),
                      workers=0)
    assert "positive" not in preds["predictions"][0] and preds["thresholds"] is None
    assert "roi-consistency calibrate --checkpoint" in capsys.readouterr().err
    cli.main(["calibrate", "--checkpoint", str(bare), "--csv", str(phantom64["val"]), "--image-root",
              str(phantom64["images"]), "--rule", "f1", "--workers", "0"])
    out = capsys.readouterr().out
    assert "thresholds (f1," in out and "Effusion" in out and str(bare) in out
    th = torch.load(bare, weights_only=True)["thresholds"]
    assert th["rule"] == "f1" and th["n_images"] == sum(1 for _ in open(phantom64["val"])) - 1
    preds = infer_csv(str(bare), str(phantom64["test"]), str(phantom64["images"]), str(tmp_path / "p.json"),
                      workers=0, progress=False)
    assert all(isinstance(r["positive"], list) for r in preds["predictions"])


def test_calibrate_refuses_a_csv_without_labels(trained64, phantom64, tmp_path, capsys):
    names = tmp_path / "names.csv"
    names.write_text("image\n" + sorted(p.name for p in phantom64["images"].iterdir())[0] + "\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["calibrate", "--checkpoint", str(trained64), "--csv", str(names), "--image-root",
                  str(phantom64["images"]), "--workers", "0"])
    assert e.value.code == 2 and "needs a labels column" in capsys.readouterr().err
