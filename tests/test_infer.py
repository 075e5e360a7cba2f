import csv
import json

import numpy as np
import torch
from PIL import Image

from roi_consistency import cli
from roi_consistency.infer import infer_csv


def test_preds_json_schema_and_faithfulness(trained64, phantom64, tmp_path):
    out, vis = tmp_path / "preds.json", tmp_path / "vis"
    infer_csv(str(trained64), str(phantom64["test"]), str(phantom64["images"]), str(out), vis_dir=str(vis),
              vis_limit=3, workers=0, progress=False)
    data = json.loads(out.read_text())
    ck = torch.load(trained64, weights_only=True)
    assert data["classes"] == ck["classes"] and data["keep_ratio"] == ck["config"]["method"]["keep_ratio"]
    assert data["checkpoint"] == str(trained64)
    with open(phantom64["test"]) as fh:
        rows = list(csv.DictReader(fh))
    assert [p["image"] for p in data["predictions"]] == [r["image"] for r in rows]
    for p, row in zip(data["predictions"], rows):
        # the default mask draws one map per class: each image's mask explains its most probable finding
        assert set(p) == {"image", "labels", "positive", "prob_full", "prob_crop", "prob_drop", "faithfulness",
                          "mask_class"}
        assert p["mask_class"] == max(p["prob_full"], key=p["prob_full"].get)
        assert p["labels"] == ([] if row["labels"] == "Normal" else row["labels"].split("|"))
        for c in data["classes"]:
            assert 0.0 <= p["prob_full"][c] <= 1.0
            assert p["faithfulness"][c] == p["prob_full"][c] - p["prob_drop"][c]
    # overlays, crops and drops for the first three images only
    stems = [r["image"][:-4] for r in rows[:3]]
    want = sorted(f"{s}_{k}.png" for s in stems for k in ("overlay", "crop", "drop"))
    assert sorted(f.name for f in vis.iterdir()) == want
    assert Image.open(vis / f"{stems[0]}_overlay.png").size == (48, 48)


def test_single_image_mode(trained64, phantom64, tmp_path, capsys):
    image = sorted(phantom64["images"].iterdir())[0]
    cli.main(["infer", "--checkpoint", str(trained64), "--image", str(image), "--save-mask", str(tmp_path / "m.png"),
              "--save-crop", str(tmp_path / "c.png"), "--keep-ratio", "0.2", "--out", str(tmp_path / "one.json")])
    table = capsys.readouterr().out
    assert "p_full" in table and "Effusion" in table and len(table.strip().splitlines()) == 15
    mask = np.asarray(Image.open(tmp_path / "m.png"))
    assert mask.shape == (48, 48) and (mask == 255).sum() == round(0.2 * 48 * 48)
    crop = np.asarray(Image.open(tmp_path / "c.png")).astype(int)
    # removed pixels carry the checkpoint's fill (the mean normal image), kept ones the image itself
    import torch
    fill = torch.load(trained64, weights_only=True)["fill_image"][0, 0].numpy()
    assert np.abs(crop[mask == 0] - np.round(fill[mask == 0] * 255)).max() <= 1
    own = np.asarray(Image.open(image).convert("L").resize((48, 48), Image.BILINEAR)).astype(int)
    assert np.abs(crop[mask == 255] - own[mask == 255]).mean() < 3
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["keep_ratio"] == 0.2 and len(one["predictions"]) == 1 and "labels" not in one["predictions"][0]
