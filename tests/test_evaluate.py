import json

import numpy as np
import pytest
import torch
from torch import nn

from roi_consistency.evaluate import evaluate_checkpoint, gradcam_maps, read_boxes
from roi_consistency.infer import infer_csv
from roi_consistency.metrics import per_class_auroc


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
    assert set(saved) >= {"n_images", "classes", "keep_ratio", "auroc", "mean_auroc", "faithfulness", "localization"}
    assert saved["keep_ratios"] == [0.05, 0.1, 0.2]  # the checkpoint's 0.1 is always added
    for k in ("learned", "gradcam", "random"):
        assert set(saved["faithfulness"][k]["comprehensiveness"]) == {"0.05", "0.1", "0.2"}
        assert saved["kept_fraction"][k] == pytest.approx(round(0.1 * 48 * 48) / (48 * 48))
        loc = saved["localization"][k]
        assert 0.0 <= loc["pointing_game"] <= 1.0 and set(loc["iobb_acc"]) == {"0.1", "0.25", "0.5"}
    assert set(saved["leakage"]) == {"learned", "random"}
    assert 0.0 <= saved["leakage"]["random"]["mean_auroc"] <= 1.0
    # on the boxed images, the true boxes are the reference: findings sit in their own places here
    boxed = saved["leakage_boxed"]
    assert boxed["n_images"] == len({n for n in read_boxes(phantom64["data"] / "BBox_List_2017.csv")})
    assert boxed["boxes"]["mean_auroc"] > boxed["random"]["mean_auroc"] + 0.2
    assert saved["auroc"]["full"]["Hernia"] is None and saved["auroc"]["full"]["Effusion"] is not None
    boxes = read_boxes(phantom64["data"] / "BBox_List_2017.csv")
    assert saved["localization"]["n_boxes"] == sum(len(v) for v in boxes.values())
    # per finding: pointing per map, and the true box as the region (counts add up to every box)
    per_finding = {f for v in boxes.values() for f, *_ in v}
    assert set(saved["localization"]["learned"]["pointing_by_class"]) == per_finding
    assert sum(v["n"] for v in saved["box_control"].values()) == saved["localization"]["n_boxes"]
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
            assert saved["auroc"][key][c] == (None if v is None else pytest.approx(v, abs=1e-4)), (key, c)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Localisation" in html


def test_evaluate_without_boxes_has_null_localization(trained64, phantom64, tmp_path):
    m = evaluate_checkpoint(str(trained64), str(phantom64["val"]), str(phantom64["images"]), out_dir=str(tmp_path),
                            keep_ratios=(0.1,), n_examples=2, workers=0, progress=False)
    assert m["localization"] is None
    assert json.loads((tmp_path / "metrics.json").read_text())["localization"] is None


def test_per_class_head_is_scored_per_pair_and_named_in_preds(phantom64, tmp_path):
    from roi_consistency.config import TrainConfig
    from roi_consistency.train import fit
    cfg = TrainConfig(train_csv=str(phantom64["val"]), val_csv=None, image_root=str(phantom64["images"]),
                      img_size=48, backbone="resnet18", pretrained=False, batch_size=16, accum_steps=1, epochs=2,
                      lr=1e-3, workers=0, save=str(tmp_path / "pc.pt"), objective="two_stage", mask_start_epoch=1,
                      mask_net="features", mask_head="per_class", evalx_weight=0.25, beta=2.0, gamma=0.0,
                      fill="normal")
    fit(cfg)
    fill = torch.load(cfg.save, weights_only=True)["fill_image"]  # stored with the model, used by every stage
    assert fill.shape == (1, 1, 48, 48) and 0 < fill.mean() < 1
    m = evaluate_checkpoint(cfg.save, str(phantom64["test"]), str(phantom64["images"]),
                            bbox=str(phantom64["data"] / "BBox_List_2017.csv"), out_dir=str(tmp_path / "eval"),
                            keep_ratios=(0.1,), n_examples=2, workers=0, progress=False)
    assert m["mask_head"] == "per_class" and m["kept_fraction"]["learned"] == pytest.approx(0.1, abs=1e-3)
    assert "normal" in m["fill"]
    assert m["faithfulness"]["learned"]["comprehensiveness"]["0.1"] is not None
    preds = infer_csv(cfg.save, str(phantom64["test"]), str(phantom64["images"]), str(tmp_path / "p.json"),
                      workers=0, progress=False)["predictions"]
    for p in preds[:10]:  # each image's mask explains its most probable class
        assert p["mask_class"] == max(p["prob_full"], key=p["prob_full"].get)
