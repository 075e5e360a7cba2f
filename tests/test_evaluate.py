import json

import numpy as np
import pytest
import torch
from torch import nn

from roi_consistency.data.boxes import read_boxes
from roi_consistency.evaluation.evaluate import evaluate_checkpoint
from roi_consistency.evaluation.explainers import gradcam_maps
from roi_consistency.evaluation.metrics import per_class_auroc
from roi_consistency.infer import infer_csv


class BrightDark(nn.Module):
    """Class 0 = 'something bright', class 1 = 'something dark': Grad-CAM must find each one."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, :, 0, 0] = 1.0
            conv.weight[1, :, 0, 0] = -1.0
            conv.bias.zero_()
        self.features = nn.Sequential(conv, nn.ReLU())

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))


def test_gradcam_maps_have_image_size_and_follow_the_class():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 4:8, 4:8] = 2.0  # bright spot, top left
    x[..., 24:28, 20:26] = -2.0  # dark spot, bottom right
    model = BrightDark().eval()
    maps = gradcam_maps(model, x.repeat(2, 1, 1, 1), [0, 1])
    assert maps.shape == (2, 1, 32, 32)
    y0, x0 = np.unravel_index(maps[0, 0].argmax().item(), (32, 32))
    y1, x1 = np.unravel_index(maps[1, 0].argmax().item(), (32, 32))
    assert 4 <= y0 < 8 and 4 <= x0 < 8
    assert 24 <= y1 < 28 and 20 <= x1 < 26


def test_read_boxes_handles_header_quirk_and_alias(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                 "a.png,Infiltrate,1.5,2,3,4\na.png,Mass,0,0,10,10\nb.png,Nodule,5,5,2,2,,,\n")
    boxes = read_boxes(p)
    assert boxes["a.png"] == [("Infiltration", 1.5, 2.0, 3.0, 4.0), ("Mass", 0.0, 0.0, 10.0, 10.0)]
    assert boxes["b.png"] == [("Nodule", 5.0, 5.0, 2.0, 2.0)]


def test_evaluate_writes_metrics_and_report(trained64, phantom64, tmp_path):
    out = tmp_path / "eval"
    m = evaluate_checkpoint(str(trained64), str(phantom64["test"]), str(phantom64["images"]),
                            bbox=str(phantom64["data"] / "BBox_List_2017.csv"), out_dir=str(out),
                            keep_ratios=(0.05, 0.2), n_examples=3, workers=0, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_images"] == m["n_images"] == sum(1 for _ in open(phantom64["test"])) - 1
    assert set(saved) >= {"n_images", "classes", "keep_ratio", "auroc", "mean_auroc", "faithfulness", "localisation"}
    assert saved["keep_ratios"] == [0.05, 0.1, 0.2]  # the checkpoint's 0.1 is always added
    for k in ("learned", "gradcam", "random"):
        assert set(saved["faithfulness"][k]["comprehensiveness"]) == {"0.05", "0.1", "0.2"}
        assert saved["kept_fraction"][k] == pytest.approx(round(0.1 * 48 * 48) / (48 * 48))
        loc = saved["localisation"][k]
        assert 0.0 <= loc["pointing_game"] <= 1.0 and set(loc["iobb_acc"]) == {"0.1", "0.25", "0.5"}
    assert saved["maps"] == ["learned", "gradcam", "random"]
    assert set(saved["leakage"]) == set(saved["maps"])  # every explainer goes through every pass
    assert 0.0 <= saved["leakage"]["random"]["mean_auroc"] <= 1.0
    # on the boxed images, the true boxes are the reference: findings sit in their own places here
    boxed = saved["leakage_boxed"]
    assert boxed["n_images"] == len({n for n in read_boxes(phantom64["data"] / "BBox_List_2017.csv")})
    assert boxed["boxes"]["mean_auroc"] > boxed["random"]["mean_auroc"] + 0.2
    assert saved["auroc"]["full"]["Hernia"] is None and saved["auroc"]["full"]["Effusion"] is not None
    boxes = read_boxes(phantom64["data"] / "BBox_List_2017.csv")
    assert saved["localisation"]["n_boxes"] == sum(len(v) for v in boxes.values())
    # per finding: pointing per map, and the true box as the region (counts add up to every box)
    per_finding = {f for v in boxes.values() for f, *_ in v}
    assert set(saved["localisation"]["learned"]["pointing_by_class"]) == per_finding
    assert sum(v["n"] for v in saved["box_control"].values()) == saved["localisation"]["n_boxes"]
    for v in saved["box_control"].values():
        assert 0 < v["box_area"] < 1 and 0 <= v["p_drop_box"] <= 1
    # The per-image learned mask is the one `infer` applies (one map per image: the most probable class's,
    # named in preds.json), so evaluate's drop and crop AUROC equal those of preds.json's probabilities.
    # (Comprehensiveness instead scores each finding with its own map, as Grad-CAM.)
    preds = infer_csv(str(trained64), str(phantom64["test"]), str(phantom64["images"]), str(tmp_path / "p.json"),
                      workers=0, progress=False)
    classes = saved["classes"]
    y = np.array([[c in p["labels"] for c in classes] for p in preds["predictions"]], dtype=float)
    assert all(p["mask_class"] in classes for p in preds["predictions"])
    for key in ("drop", "crop"):
        probs = np.array([[p[f"prob_{key}"][c] for c in classes] for p in preds["predictions"]])
        for c, v in per_class_auroc(y, probs, classes).items():
            assert saved["auroc"][key]["learned"][c] == (None if v is None else pytest.approx(v, abs=1e-4)), (key, c)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Localisation" in html
    # where the weights were trained and where they were scored: runs compare only on one kind of machine
    env = saved["environment"]
    assert env["trained"] == torch.load(trained64, weights_only=True)["environment"]
    assert env["evaluated"]["device"] == "cpu" and env["evaluated"]["torch"] == torch.__version__
    assert f"Trained on {env['trained']['name']}" in html and f"torch {torch.__version__}" in html
    # calibration: ECE per finding, and sensitivity/specificity at the thresholds training chose on val
    cal = saved["calibration"]
    assert cal["bins"] == 15 and cal["thresholds"]["csv"] == str(phantom64["val"]) and "warning" not in cal
    eff = cal["per_class"]["Effusion"]
    assert 0 <= eff["ece"] <= 1 and eff["ece_ci95"][0] < eff["ece_ci95"][1]
    pos = y[:, classes.index("Effusion")] > 0.5
    called = np.array([p["prob_full"]["Effusion"] >= eff["threshold"] for p in preds["predictions"]])
    assert eff["sensitivity"] == pytest.approx(called[pos].mean())
    assert eff["specificity"] == pytest.approx((~called[~pos]).mean())
    assert "Hernia" in cal["per_class"] and "sensitivity" not in cal["per_class"]["Hernia"]  # no positives
    with_pos = [c for c, v in cal["per_class"].items() if v["n_pos"] > 0]  # Hernia's ECE flatters nobody's mean
    assert cal["mean_ece_over"] == with_pos and "Hernia" not in with_pos
    assert cal["mean_ece"] == pytest.approx(np.mean([cal["per_class"][c]["ece"] for c in with_pos]))
    assert "id='calibration'" in html and "reliability diagram" in html
    cv = saved["curves"]
    assert cv["curve_images"] == 200 and cv["n_images"] == min(200, cv["images_with_pairs"])
    assert all(0 <= v[o]["auc"] <= 1 and len(v[o]["curve"]) == 21 for kind in ("fill", "road")
               for v in cv[kind].values() for o in ("deletion", "insertion"))


def test_evaluate_without_boxes_has_null_localisation(trained64, phantom64, tmp_path):
    m = evaluate_checkpoint(str(trained64), str(phantom64["val"]), str(phantom64["images"]), out_dir=str(tmp_path),
                            keep_ratios=(0.1,), n_examples=2, workers=0, progress=False)
    assert m["localisation"] is None
    assert json.loads((tmp_path / "metrics.json").read_text())["localisation"] is None
    # evaluated on the CSV its thresholds were chosen on: said, in metrics.json and the report
    assert "chosen on" in m["calibration"]["warning"] and "optimistic" in (tmp_path / "report.html").read_text()


def test_the_fill_is_stored_with_the_model_and_named_in_the_outputs(trained64, phantom64, tmp_path):
    fill = torch.load(trained64, weights_only=True)["fill_image"]  # stored with the model, used by every stage
    assert fill.shape == (1, 1, 48, 48) and 0 < fill.mean() < 1
    m = evaluate_checkpoint(str(trained64), str(phantom64["val"]), str(phantom64["images"]), out_dir=str(tmp_path),
                            keep_ratios=(0.1,), n_examples=0, workers=0, progress=False)
    assert "normal" in m["fill"] and m["faithfulness"]["learned"]["comprehensiveness"]["0.1"] is not None


def boxed_test_set(phantom64, tmp_path):
    """The phantom's test images that have boxes, as their own CSV."""
    boxes = read_boxes(phantom64["data"] / "BBox_List_2017.csv")
    lines = open(phantom64["test"]).read().splitlines()
    path = tmp_path / "boxed.csv"
    path.write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split(",")[0] in boxes]) + "\n")
    return path


class LocalBright(nn.Module):
    """A transparent classifier: 'Mass' is a bright patch anywhere (the brightest 4x4 mean above the image
    mean); every other finding is absent."""

    def forward(self, xn):
        x = xn.mean(1, keepdim=True)
        peak = torch.nn.functional.avg_pool2d(x, 4, stride=1).amax(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))
        out = torch.full((len(x), 14), -5.0)
        out[:, 4] = 6 * peak - 3
        return out


def bright_patches(tmp_path):
    """24 grey 48-px films, every other one with a bright 8x8 patch (a Mass, boxed): (dataset, boxes)."""
    from PIL import Image

    from roi_consistency.data.dataset import ImageCSVDataset
    from roi_consistency.data.labels import FINDINGS
    rng = np.random.default_rng(0)
    rows, boxes = ["image,labels"], {}
    for i in range(24):
        img = 0.45 + 0.02 * rng.standard_normal((48, 48))
        name = f"{i:08d}_000.png"
        if i % 2 == 0:  # a bright 8x8 patch: the evidence, with its box
            x0, y0 = rng.integers(2, 38, size=2)
            img[y0:y0 + 8, x0:x0 + 8] += 0.4
            boxes[name] = [("Mass", float(x0), float(y0), 8.0, 8.0)]
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(tmp_path / name)
        rows.append(f"{name},{'Mass' if i % 2 == 0 else 'Normal'}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    return ImageCSVDataset(tmp_path / "t.csv", tmp_path, 48, list(FINDINGS)), boxes


def test_an_oracle_map_equal_to_the_true_box_points_at_it_and_removes_more_than_random(tmp_path):
    from roi_consistency.evaluation.explainers import BoxOracle, Random
    from roi_consistency.evaluation.passes import EvalOptions, evaluate_model
    from roi_consistency.evaluation.summary import summarize
    from roi_consistency.model.config import config
    from roi_consistency.model.mask_nets import MaskNet
    from roi_consistency.model.network import ROIModel
    ds, boxes = bright_patches(tmp_path)
    model = ROIModel(LocalBright(), MaskNet()).eval()  # removed pixels show the ImageNet mean, the background
    opt = EvalOptions(keep_ratios=(0.05, 0.1), n_examples=2, workers=0, progress=False)
    t = evaluate_model(model, ds, boxes, [BoxOracle(), Random(0)], [0.05, 0.1], 0.1, opt, torch.device("cpu"))
    m = summarize(t, ds.labels, config("seed", fill="mean"), "ck", True, 0, None, str(tmp_path / "t.csv"))
    assert m["localisation"]["n_boxes"] == 12 and m["localisation"]["boxes"]["pointing_game"] == 1.0
    assert m["localisation"]["random"]["pointing_game"] < 0.5
    oracle, rand = (m["faithfulness"][k]["comprehensiveness"]["0.1"] for k in ("boxes", "random"))
    assert oracle > 0.5 and oracle > rand + 0.3, (oracle, rand)
    road = {k: {o: m["road"][k][o]["0.1"] for o in ("morf", "lerf")} for k in ("boxes", "random")}
    assert road["boxes"]["morf"] > road["random"]["morf"] + 0.3, road  # imputed from its neighbours, the patch is gone
    assert road["boxes"]["lerf"] < road["random"]["lerf"] - 0.1, road
    u = m["uncertainty"]["maps"]
    assert u["boxes"]["pointing_game"] == {"mean": 1.0, "ci95": [1.0, 1.0]}  # a constant's interval is a point
    lo, hi = u["random"]["comprehensiveness"]["ci95"]
    assert lo <= rand <= hi and lo < hi and u["random"]["comprehensiveness"]["mean"] == pytest.approx(rand)
    assert u["boxes"]["road_morf"]["ci95"][0] > u["random"]["road_morf"]["ci95"][1]  # apart, beyond the noise
    # deletion and insertion curves: removing the true box kills p at once, keeping it alone restores it
    cv = m["curves"]
    assert cv["n_images"] == 12 and cv["n_pairs"] == 12 and cv["ratios"][0] == 0.0 and cv["ratios"][-1] == 1.0
    for kind in ("fill", "road"):
        o, r = cv[kind]["boxes"], cv[kind]["random"]
        assert o["deletion"]["auc"] < r["deletion"]["auc"] - 0.1, (kind, o, r)
        assert o["insertion"]["auc"] > r["insertion"]["auc"] + 0.1, (kind, o, r)
        assert o["deletion"]["auc_ci95"][1] < r["deletion"]["auc_ci95"][0]
        assert len(o["deletion"]["curve"]) == len(cv["ratios"])
    # by lesion size too (here every box has the same area: one tercile holds them all)
    size = m["localisation_by_size"]
    assert all((size["boxes"][t]["pointing_game"] or 0) >= (size["random"][t]["pointing_game"] or 0)
               for t in ("small", "medium", "large")) and size["boxes"]["large"]["pointing_game"] == 1.0
    # one more explainer is one more entry in every pass
    for key in ("faithfulness", "road", "kept_fraction", "leakage"):
        assert set(m[key]) == {"boxes", "random"}, key
    assert set(t.examples[0]["maps"]) == {"boxes", "random"}


def test_the_image_and_the_pair_figures_share_one_map_per_image_and_class(tmp_path):
    from roi_consistency.evaluation.explainers import Random
    from roi_consistency.evaluation.passes import EvalOptions, evaluate_model
    from roi_consistency.model.mask_nets import MaskNet
    from roi_consistency.model.network import ROIModel
    ds, boxes = bright_patches(tmp_path)
    drawn = []

    class Counted(Random):
        def __call__(self, pairs):
            drawn.append(len(pairs))
            return super().__call__(pairs)

    opt = EvalOptions(keep_ratios=(0.05,), n_examples=0, workers=0, progress=False, gallery=False)
    t = evaluate_model(ROIModel(LocalBright(), MaskNet()).eval(), ds, boxes, [Counted(0)], [0.05, 0.1], 0.1, opt,
                       torch.device("cpu"))
    top = t.p_full.argmax(1)
    found = {(int(i), int(c)) for i, c in zip(*np.nonzero(ds.labels > 0.5))}
    assert sum(drawn) == len(found | set(enumerate(top.tolist()))) < len(found) + len(top)
    rows = np.array([i for i, c in enumerate(top.tolist()) if (i, c) in found])  # the most probable class is a finding
    assert len(rows) == 12
    for img, pair in ((t.crop_img, t.crop), (t.drop_img, t.drop)):  # the same random map scored both ways
        np.testing.assert_array_equal(img["random"][rows, top[rows]], pair["random"][0.1][rows, top[rows]])


def test_with_a_cache_box_sizes_come_from_its_index(trained64, phantom64, tmp_path, monkeypatch):
    from roi_consistency.data import boxes
    from roi_consistency.data.cache import build_cache
    csv_path = boxed_test_set(phantom64, tmp_path)
    build_cache([str(csv_path)], str(phantom64["images"]), 64, str(tmp_path / "cache"), workers=1, progress=False)

    opened = []
    monkeypatch.setattr(boxes, "source_size", lambda path: opened.append(path))  # reading a header
    m = evaluate_checkpoint(str(trained64), str(csv_path), str(tmp_path / "no-images-here"),
                            bbox=str(phantom64["data"] / "BBox_List_2017.csv"), out_dir=str(tmp_path / "e"),
                            keep_ratios=(0.1,), n_examples=1, workers=0, progress=False, cache=str(tmp_path / "cache"))
    boxes = read_boxes(phantom64["data"] / "BBox_List_2017.csv")
    assert m["localisation"]["n_boxes"] == sum(len(v) for v in boxes.values())
    assert opened == []  # no header was read: the cache's index knows every size (and the images are elsewhere)


def test_evaluate_command_prints_the_summary_and_names_its_files(trained64, phantom64, tmp_path, capsys):
    from roi_consistency import cli
    cli.main(["evaluate", "--checkpoint", str(trained64), "--csv", str(phantom64["test"]), "--image-root",
              str(phantom64["images"]), "--bbox", str(phantom64["data"] / "BBox_List_2017.csv"), "--out-dir",
              str(tmp_path), "--keep-ratios", "0.1", "--road-ratios", "0.05", "--examples", "2", "--workers", "0",
              "--confounders", str(phantom64["data"] / "BBox_List_2017.csv"),  # the lesions' boxes, audited as such
              "--maps", "gradcam,random,anomaly,attribution,gradcam16", "--curve-images", "8", "--gallery-limit", "8"])
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "metrics.json").read_text())
    cf = saved["confounders"]
    assert cf["n_pairs"] == saved["localisation"]["n_boxes"] and cf["left_out_images"] == []
    maps = ["learned", "gradcam", "random", "anomaly", "attribution", "gradcam16"]  # the learned map first
    assert saved["maps"] == maps and list(saved["road"]) == maps and list(saved["localisation"]) == ["n_boxes", *maps]
    assert list(cf["sets"]["all"]["maps"]) == maps and "confounder audit" in out
    learned = cf["sets"]["all"]["maps"]["learned"]
    assert (f"learned {learned['pointing']['mean']:.2f} / {learned['share']['mean']:.2f} / "
            f"{learned['placebo_share']['mean']:.2f}") in out
    assert sum(cf["sets"][k]["n_pairs"] for k in ("relied", "ignored")) <= cf["n_pairs"]
    html = (tmp_path / "report.html").read_text()
    assert "id='confounders'" in html and "<th>share of the mirrored region</th>" in html
    assert set(cf["sets"]["all"]["maps"]["learned"]) == {"pointing", "pointing_tolerant", "share", "energy",
                                                         "placebo_share"}
    assert f"evaluate: {saved['n_images']} images" in out and "gradcam" in out and "pointing" in out
    assert "ROAD MoRF" in out and "95% CI" in out
    assert saved["road_ratios"] == [0.05, 0.1] and set(saved["road"]["learned"]["morf"]) == {"0.05", "0.1"}
    assert saved["keep_ratios"] == [0.05, 0.1]  # a ROAD ratio is scored with the fill too
    size, loc = saved["localisation_by_size"], saved["localisation"]
    assert sum(size["n"].values()) == loc["n_boxes"] and size["cut_points"][0] <= size["cut_points"][1]
    assert min(size["n"].values()) >= loc["n_boxes"] // 3 - 2  # terciles of the boxes' own areas
    for k in ("learned", "gradcam"):  # the terciles partition the boxes: their weighted mean is the whole
        whole = sum(size["n"][t] * size[k][t]["pointing_game"] for t in size["n"]) / loc["n_boxes"]
        assert whole == pytest.approx(loc[k]["pointing_game"])
    assert f"{tmp_path}/report.html" in out and (tmp_path / "report.html").is_file()
    with pytest.raises(SystemExit) as stop:
        cli.main(["evaluate", "--checkpoint", str(trained64), "--csv", str(phantom64["test"]), "--image-root",
                  str(phantom64["images"]), "--keep-ratios", "0.1,2"])
    assert stop.value.code == 2 and "--keep-ratios 0.1,2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["evaluate", "--checkpoint", str(trained64), "--csv", str(phantom64["test"]), "--image-root",
                  str(phantom64["images"]), "--road-ratios", "half"])
    assert stop.value.code == 2 and "--road-ratios half: expected numbers" in capsys.readouterr().err


def test_masks_of_the_boxes_score_as_the_boxes_do(trained64, phantom64, tmp_path):
    """evaluate --masks with each phantom box drawn as a mask (at the film's own 64 px): the maps point into
    the masks about as often as into the boxes (the masks are scaled to 48 px, the boxes exactly), and the
    report and summary show them."""
    from PIL import Image
    folder = tmp_path / "masks"
    boxes = read_boxes(phantom64["data"] / "BBox_List_2017.csv")
    drawn = {}
    for name, bxs in boxes.items():
        for f, x, y, w, h in bxs:
            m = drawn.setdefault((f, name), np.zeros((64, 64), np.uint8))
            m[round(y):round(y + h), round(x):round(x + w)] = 1  # a 0/1 mask: nonzero is the region
    for (f, name), m in drawn.items():
        (folder / f).mkdir(parents=True, exist_ok=True)
        Image.fromarray(m).save(folder / f / name)
    m = evaluate_checkpoint(str(trained64), str(phantom64["test"]), str(phantom64["images"]),
                            bbox=str(phantom64["data"] / "BBox_List_2017.csv"), out_dir=str(tmp_path / "e"),
                            keep_ratios=(0.1,), road_ratios=(0.1,), curve_images=0, gallery=False, n_examples=0,
                            workers=0, progress=False, masks=str(folder))
    lm, loc = m["localisation_masks"], m["localisation"]
    assert lm["n_masks"] == len(drawn) <= loc["n_boxes"]
    for k in ("learned", "gradcam", "random"):
        assert abs(lm[k]["pointing"] - loc[k]["pointing_game"]) <= 0.1, k
        assert 0 <= lm[k]["iou"] <= lm[k]["share"] <= 1
    assert lm["learned"]["pointing"] > lm["random"]["pointing"]
    assert "Against masks" in (tmp_path / "e" / "report.html").read_text()
