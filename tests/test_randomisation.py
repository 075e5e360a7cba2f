"""The randomisation check: a map that ignores the model fails it, Grad-CAM passes it."""
import json

import numpy as np
import pytest
import torch
import torchvision

from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.evaluation.evaluate import evaluate_checkpoint
from roi_consistency.evaluation.randomisation import (
    cascade_stages,
    frozen_head_check,
    randomise,
    sanity_pairs,
    spearman,
)
from roi_consistency.model.trained import load_trained


def test_stages_run_top_down_for_resnet_and_convnext():
    names = [n for n, _ in cascade_stages(torchvision.models.resnet18())]
    assert names == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    names = [n for n, _ in cascade_stages(torchvision.models.convnext_tiny())]
    assert names[:3] == ["classifier", "features.7", "features.6"] and names[-1] == "features.0"


def test_spearman_counts_ties_once_and_a_constant_map_as_zero():
    a = torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0, 3.0]]).view(1, 1, 2, 3)
    assert spearman(a, a * 5 + 1)[0] == pytest.approx(1.0)
    assert spearman(a, -a)[0] == pytest.approx(-1.0)
    assert spearman(a, torch.zeros_like(a))[0] == 0.0


def test_randomise_reinitialises_weights_and_running_statistics():
    net = torchvision.models.resnet18().eval()
    net.layer4[0].bn1.running_mean.fill_(3.0)
    before = net.layer4[0].conv1.weight.clone()
    randomise(net.layer4, seed=0)
    assert not torch.equal(before, net.layer4[0].conv1.weight)
    assert net.layer4[0].bn1.running_mean.abs().max() == 0


def test_edges_fail_and_gradcam_passes_and_the_model_is_left_as_trained(trained64, phantom64):
    model, cfg = load_trained(trained64)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ds = ImageCSVDataset(phantom64["test"], phantom64["images"], cfg.model.img_size, cfg.data.classes)
    rows = np.flatnonzero((ds.labels > 0.5).any(1))[:24]
    pairs = sanity_pairs(ds, rows, {}, model, torch.device("cpu"))
    s = frozen_head_check(model, cfg.method.mode, pairs, steps=3, seed=0, chunk=8)
    assert s["stages"] == ["fc", "layer4", "layer3"] and s["n_pairs"] == len(rows)
    edges, cam, learned = (s["maps"][k] for k in ("edges", "gradcam", "learned"))
    assert edges["median_abs"] == pytest.approx([1.0, 1.0, 1.0]) and not edges["pass"]
    assert cam["pass"] and cam["median"][-1] < 0.2 and cam["median_abs"][-1] >= abs(cam["median"][-1]), cam
    assert learned["median"][-1] < learned["median"][0] or learned["median"][0] < 0.9, learned  # it moves
    lo, hi = cam["median_ci95"][-1]
    assert lo <= cam["median"][-1] <= hi
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # a copy was randomised


def test_evaluate_sanity_writes_the_check_into_metrics_and_the_report(trained64, phantom64, tmp_path):
    m = evaluate_checkpoint(str(trained64), str(phantom64["test"]), str(phantom64["images"]), out_dir=str(tmp_path),
                            keep_ratios=(0.1,), road_ratios=(0.1,), curve_images=16, sanity=True, sanity_images=12,
                            n_examples=1, workers=0, progress=False)
    assert m["sanity"]["retrained_head"] is None  # no `sanity` command ran into this folder
    san = m["sanity"]["frozen_head"]
    assert san["n_pairs"] == 12 and set(san["maps"]) == {"learned", "gradcam", "edges"}
    # down to the stem; the verdict is read once the top three stages are random
    assert san["stages"] == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"] and san["judged_at"] == 3
    assert all(v["pass"] == (v["median"][2] < san["pass_below"]) and len(v["median"]) == 7
               for v in san["maps"].values())
    assert m["curves"]["n_images"] == 16
    html = (tmp_path / "report.html").read_text()
    assert "id='sanity'" in html and "randomisation check" in html


def test_the_sanity_command_retrains_the_head_at_each_step_and_against_a_ceiling(trained64, phantom64, tmp_path,
                                                                                 capsys):
    from roi_consistency import cli
    (tmp_path / "metrics.json").write_text(json.dumps({"n_images": 1, "sanity": None}))  # an evaluation there
    cli.main(["sanity", "--checkpoint", str(trained64), "--train-csv", str(phantom64["val"]), "--val-csv",  # small
              str(phantom64["val"]), "--csv", str(phantom64["test"]), "--image-root", str(phantom64["images"]),
              "--out-dir", str(tmp_path), "--steps", "2", "--sanity-images", "8", "--workers", "0", "--quiet"])
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "sanity.json").read_text())["retrained_head"]
    assert r["stages"] == ["fc", "layer4"] and r["judged_at"] == 2 and r["n_pairs"] == 8
    assert len(r["learned"]["median"]) == 2 and -1 <= r["ceiling"]["median"] <= 1
    at = r["learned"]["median"][1]
    assert r["pass"] == (at < r["pass_below"] and at < r["ceiling"]["median"] / 2)
    for k in range(3):  # the ceiling, then each step: a mask stage trained from its first step
        ck = torch.load(tmp_path / "sanity" / f"step{k}" / "ck.pt", weights_only=True)
        assert ck["stage"] == "mask" and ck["progress"]["mask"]["epoch"] == 1 and len(ck["history"]) == 1
    first = torch.load(tmp_path / "sanity" / "step1" / "start.pt", weights_only=True)
    given = torch.load(trained64, weights_only=True)
    assert not torch.equal(first["backbone"]["fc.weight"], given["backbone"]["fc.weight"])  # fc randomised
    assert torch.equal(first["backbone"]["layer4.0.conv1.weight"], given["backbone"]["layer4.0.conv1.weight"])
    assert json.loads((tmp_path / "metrics.json").read_text())["sanity"]["retrained_head"] == r
    assert json.loads((tmp_path / "sanity.json").read_text())["checkpoint_stamp"]["size"] == trained64.stat().st_size
    assert "retrained-head check" in out and "ceiling" in out


def test_the_sanity_command_takes_a_mask_stage_trained_alone_against_a_given_classifier(trained64, phantom64,
                                                                                         tmp_path):
    """A checkpoint from `train --epochs 0 --weights CK` has no classifier stage of its own: the check retrains
    its mask stage alone too, against the given classifier randomised."""
    from roi_consistency import cli
    from roi_consistency.model.config import config
    from roi_consistency.training.train import fit
    alone = tmp_path / "alone.pt"
    fit(config(train_csv=str(phantom64["val"]), val_csv=str(phantom64["val"]), image_root=str(phantom64["images"]),
               img_size=48, backbone="resnet18", pretrained=False, batch_size=16, accum_steps=1, epochs=0,
               mask_epochs=1, weights=str(trained64), workers=0, save=str(alone)))
    assert set(torch.load(alone, weights_only=True)["progress"]) == {"mask"}
    cli.main(["sanity", "--checkpoint", str(alone), "--train-csv", str(phantom64["val"]), "--val-csv",
              str(phantom64["val"]), "--csv", str(phantom64["test"]), "--image-root", str(phantom64["images"]),
              "--out-dir", str(tmp_path), "--steps", "1", "--sanity-images", "8", "--workers", "0", "--quiet"])
    r = json.loads((tmp_path / "sanity.json").read_text())["retrained_head"]
    assert r["stages"] == ["fc"] and len(r["learned"]["median"]) == 1
    given = torch.load(trained64, weights_only=True)["backbone"]
    for k in range(2):  # the ceiling against the given classifier itself, then against it with fc random
        ck = torch.load(tmp_path / "sanity" / f"step{k}" / "ck.pt", weights_only=True)
        assert set(ck["progress"]) == {"mask"} and ck["progress"]["mask"]["epoch"] == 1
        assert torch.equal(ck["backbone"]["layer4.0.conv1.weight"], given["layer4.0.conv1.weight"])
        assert torch.equal(ck["backbone"]["fc.weight"], given["fc.weight"]) == (k == 0)


def test_a_retrained_check_of_an_earlier_state_of_the_checkpoint_stays_out_of_the_report(tmp_path, capsys):
    """sanity.json names its checkpoint by path; the same path written again since (more training) has another
    size or time, and evaluate leaves that check out, saying so. One written before the stamp is kept."""
    from roi_consistency.evaluation.evaluate import retrained_head
    from roi_consistency.files.checkpoint import stamp
    ck, check = tmp_path / "m.pt", {"pass": True}
    ck.write_bytes(b"first")
    (tmp_path / "sanity.json").write_text(json.dumps({"checkpoint": str(ck), "checkpoint_stamp": stamp(ck),
                                                      "retrained_head": check}))
    assert retrained_head(tmp_path, str(ck)) == check and retrained_head(tmp_path, str(tmp_path / "x.pt")) is None
    ck.write_bytes(b"trained further")
    assert retrained_head(tmp_path, str(ck)) is None and "written again since" in capsys.readouterr().err
    (tmp_path / "sanity.json").write_text(json.dumps({"checkpoint": str(ck), "retrained_head": check}))
    assert retrained_head(tmp_path, str(ck)) == check
