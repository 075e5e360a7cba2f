"""Shared fixtures: a small phantom dataset, made once per test session (never ../shared)."""
import pytest

from roi_consistency.data import nih
from roi_consistency.data.phantom import make_phantom


@pytest.fixture(scope="session")
def phantom64(tmp_path_factory):
    """480 phantom images at 64 px, unified, with split CSVs. Returns a dict of paths."""
    root = tmp_path_factory.mktemp("phantom64")
    data = root / "nih"
    make_phantom(data, n_images=480, size=64, seed=0, workers=2, progress=False)
    nih.unify(str(data), progress=False)
    nih.make_csv(str(data), out_dir=str(root / "csv"), val_fraction=0.2, seed=0)
    return {"root": root, "data": data, "images": data / "images",
            **{s: root / "csv" / f"nih_roi_{s}.csv" for s in nih.SPLITS}}


@pytest.fixture(scope="session")
def trained64(phantom64, tmp_path_factory):
    """A resnet18 checkpoint trained briefly at 48 px on phantom64 with the default method (a classifier
    epoch, then a mask epoch): enough for schemas, not accuracy."""
    from roi_consistency.model.config import config
    from roi_consistency.training.train import fit
    out = tmp_path_factory.mktemp("trained64")
    cfg = config(train_csv=str(phantom64["train"]), val_csv=str(phantom64["val"]), image_root=str(phantom64["images"]),
                 img_size=48, backbone="resnet18", pretrained=False, batch_size=16, accum_steps=1, epochs=1,
                 mask_epochs=1, lr=1e-3, workers=0, save=str(out / "m.pt"))
    fit(cfg)
    return out / "m.pt"
