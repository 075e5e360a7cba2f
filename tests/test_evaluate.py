import json

import numpy as np
import pytest
import torch
from torch import nn

from roi_consistency.evaluate import evaluate_checkpoint, gradcam_maps, read_boxes
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
    assert set(saved) >= {"n_images", "classes", "keep_ratio", "auroc", "mean_auroc", "faithfulness", "localization"}
    assert saved["keep_ratios"] == [0.05, 0.1, 0.2]  # the checkpoint's 0.1 is always added
    for k in ("learned", "gradcam", "random"):
        assert set(saved["faithfulness"][k]["comprehensiveness"]) == {"0.05", "0.1", "0.2"}
        assert saved["kept_fraction"][k] == pytest.approx(round(0.1 * 48 * 48) / (48 * 48))
        loc = saved["localization"][k]
        assert 0.0 <= loc["pointing_game"] <= 1.0 and set(loc["iobb_acc"]) == {"0.1", "0.25", "0.5"}
    assert set(saved["leakage"]) == {"learned", "random"}
    assert 0.0 <= saved["leakage"]["random"]["mean_auroc"] <= 1.0
    assert saved["auroc"]["full"]["Hernia"] is None and saved["auroc"]["full"]["Effusion"] is not None
    boxes = read_boxes(phantom64["data"] / "BBox_List_2017.csv")
    assert saved["localization"]["n_boxes"] == sum(len(v) for v in boxes.values())
    # the learned-mask comprehensiveness agrees with preds.json from `infer` on the same model
    preds = infer_csv(str(trained64), str(phantom64["test"]), str(phantom64["images"]), str(tmp_path / "p.json"),
                      workers=0, progress=False)
    diffs = [p["faithfulness"][c] for p in preds["predictions"] for c in p["labels"]]
    assert saved["faithfulness"]["learned"]["comprehensiveness"]["0.1"] == pytest.approx(np.mean(diffs), abs=1e-5)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Localisation" in html


def test_evaluate_without_boxes_has_null_localization(trained64, phantom64, tmp_path):
    m = evaluate_checkpoint(str(trained64), str(phantom64["val"]), str(phantom64["images"]), out_dir=str(tmp_path),
                            keep_ratios=(0.1,), n_examples=2, workers=0, progress=False)
    assert m["localization"] is None
    assert json.loads((tmp_path / "metrics.json").read_text())["localization"] is None
