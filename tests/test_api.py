"""The Python API: the README's lines run, every input type gives the same numbers, and `infer` is a thin
layer over the same calls."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import roi_consistency as rc
from roi_consistency.errors import UserError
from roi_consistency.infer import infer_csv


def readme_python() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(trained64, phantom64, tmp_path, monkeypatch):
    code = readme_python()
    assert len(code.strip().splitlines()) <= 15
    demo = tmp_path / "runs" / "demo"
    (demo / "checkpoints").mkdir(parents=True)
    (demo / "phantom").mkdir()
    os.symlink(trained64, demo / "checkpoints" / "nih_roi_consistency.best.pt")
    os.symlink(phantom64["images"], demo / "phantom" / "images")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    model, maps, out, preds = (scope[k] for k in ("model", "maps", "out", "preds"))
    n = len(scope["images"])
    assert maps.shape == (n, 48, 48) and maps.dtype == np.float32
    assert out["full"].shape == (n, 14) and out["mask"].mean() == pytest.approx(round(0.1 * 48 * 48) / 48 / 48)
    assert [p["prob"]["Effusion"] for p in preds] == pytest.approx(out["full"][:, model.classes.index("Effusion")])
    assert model.device == torch.device("cpu")


def test_infer_is_a_thin_layer_over_the_same_calls(trained64, phantom64, tmp_path):
    preds = infer_csv(str(trained64), str(phantom64["test"]), str(phantom64["images"]), str(tmp_path / "p.json"),
                      workers=0, progress=False)["predictions"][:6]
    model = rc.load(trained64)
    out = model.crop_drop([phantom64["images"] / p["image"] for p in preds], batch_size=4)
    for k in ("full", "crop", "drop"):
        want = np.array([[p[f"prob_{k}"][c] for c in model.classes] for p in preds])
        assert np.abs(out[k] - want).max() < 1e-6, k
    assert out["mask_class"] == [p["mask_class"] for p in preds]
    for p, got in zip(preds, model.predict([phantom64["images"] / p["image"] for p in preds])):
        assert got["positive"] == p["positive"]


def test_every_kind_of_image_gives_the_same_numbers(trained64, phantom64):
    model = rc.load(trained64)
    path = sorted(phantom64["images"].iterdir())[0]
    pil = Image.open(path)
    sized = np.asarray(pil.convert("L").resize((48, 48), Image.BILINEAR), dtype=np.uint8)
    inputs = [path, str(path), pil, np.asarray(pil), sized, sized / 255.0, torch.from_numpy(sized / 255.0)[None],
              np.repeat(sized[..., None], 3, axis=2)]
    probs = np.stack([model.predict([im])[0]["prob"]["Effusion"] for im in inputs])
    assert np.abs(probs - probs[0]).max() < 1e-6, probs
    batch = torch.from_numpy(np.stack([sized, sized]) / 255.0).float()[:, None]  # [N, 1, H, W]
    assert model.explain(batch).shape == (2, 48, 48)
    # a larger float image is resized on the way in, close to what PIL makes of it
    big = np.asarray(pil.convert("L"), dtype=np.float32) / 255
    assert abs(model.predict(big)[0]["prob"]["Effusion"] - probs[0]) < 0.05


def test_explain_draws_the_map_crop_drop_cuts(trained64, phantom64):
    from roi_consistency.model.masks import topk_mask
    model = rc.load(trained64)
    images = sorted(phantom64["images"].iterdir())[:3]
    out = model.crop_drop(images, keep_ratio=0.2)
    maps = model.explain(images)  # each image's most probable finding, as crop_drop explains it
    assert np.array_equal(topk_mask(torch.from_numpy(maps)[:, None], 0.2)[:, 0].numpy() > 0.5, out["mask"])
    named = model.explain(images, finding=out["mask_class"][0])
    assert np.allclose(named[0], maps[0])
    with pytest.raises(UserError, match="not one of this model's classes"):
        model.explain(images, finding="Fracture")
    assert rc.__all__ == ["Model", "__version__", "load"] and isinstance(model, rc.Model)
