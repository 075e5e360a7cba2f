import json

import numpy as np
import pytest
import torch

from roi_consistency.data.cache import build_cache
from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.data.images import ImageCache, load_image
from roi_consistency.data.labels import FINDINGS
from roi_consistency.errors import UserError


@pytest.fixture(scope="module")
def cache32(phantom64, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c32"
    build_cache([str(phantom64["val"]), str(phantom64["test"])], str(phantom64["images"]), 32, str(out),
                workers=2, progress=False)
    return out


def test_round_trip_equals_resized_decode(cache32, phantom64):
    cache = ImageCache(cache32)
    assert cache.size == 32 and len(cache.names) > 50
    for name in cache.names[::17]:
        assert torch.equal(cache.get(name), load_image(phantom64["images"] / name, 32))


def test_resume_finishes_an_interrupted_build(cache32, phantom64, tmp_path):
    import shutil
    work = tmp_path / "c"
    shutil.copytree(cache32, work)
    index = json.loads((work / "index.json").read_text())
    n = len(index["names"])
    # what an interruption leaves: some rows never marked done (their bytes garbage), index incomplete
    done = np.memmap(work / "done.u8", dtype=np.uint8, mode="r+", shape=(n,))
    arr = np.memmap(work / "images.u8", dtype=np.uint8, mode="r+", shape=(n, 32, 32))
    done[5:40] = 0
    arr[5:40] = 7
    done.flush()
    arr.flush()
    (work / "index.json").write_text(json.dumps({**index, "complete": False}))
    with pytest.raises(UserError, match="incomplete"):
        ImageCache(work)
    build_cache([str(phantom64["val"]), str(phantom64["test"])], str(phantom64["images"]), 32, str(work),
                workers=1, progress=False)
    fixed = ImageCache(work)
    for i in (5, 20, 39):
        assert torch.equal(fixed.get(fixed.names[i]), load_image(phantom64["images"] / fixed.names[i], 32))


def test_corrupt_image_is_named_and_cache_stays_incomplete(tmp_path):
    from PIL import Image
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        Image.fromarray(np.full((40, 40), 50 * k, np.uint8)).save(images / f"0000000{k}_000.png")
    (images / "00000009_000.png").write_bytes(b"\x89PNG not really")
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("image,labels\n" + "".join(f"0000000{k}_000.png,Normal\n" for k in (0, 1, 2, 9)))
    with pytest.raises(UserError, match="00000009_000.png"):
        build_cache([str(csv_path)], str(images), 16, str(tmp_path / "c"), workers=1, progress=False)
    assert json.loads((tmp_path / "c" / "index.json").read_text())["complete"] is False


def test_upsampling_is_refused(cache32):
    with pytest.raises(UserError, match="upsample"):
        ImageCache(cache32, img_size=48)


def test_cache_and_png_give_the_same_batches(cache32, phantom64):
    classes = list(FINDINGS)
    png = ImageCSVDataset(phantom64["test"], phantom64["images"], 32, classes)
    cached = ImageCSVDataset(phantom64["test"], phantom64["images"], 32, classes, cache=ImageCache(cache32, 32))
    for i in range(0, len(png), 9):
        a, ya, _ = png[i]
        b, yb, _ = cached[i]
        assert torch.equal(a, b) and torch.equal(ya, yb)
    # a larger cache resized on read stays within the resize tolerance of decoding straight to size
    smaller = ImageCSVDataset(phantom64["test"], phantom64["images"], 16, classes, cache=ImageCache(cache32, 16))
    direct = ImageCSVDataset(phantom64["test"], phantom64["images"], 16, classes)
    diff = max((smaller[i][0] - direct[i][0]).abs().mean().item() for i in range(0, len(direct), 9))
    assert diff < 0.03


def test_device_side_resize_and_augment_match_the_loader_path(cache32, phantom64):
    """Raw cached rows resized and augmented as a batch (`augment_batch`, on the GPU when there is one)
    give the loader workers' images, within the tolerance of one resampling instead of two."""
    from torch.utils.data import default_collate

    from roi_consistency.data.augment import augment_batch
    classes = list(FINDINGS)
    cache = ImageCache(cache32, 16)
    worker = ImageCSVDataset(phantom64["test"], phantom64["images"], 16, classes, augment=True, cache=cache)
    raw = ImageCSVDataset(phantom64["test"], phantom64["images"], 16, classes, augment=True, cache=cache, raw=True)
    items = [(i, 1000 + i) for i in range(0, 60, 3)] + [i for i in range(1, 60, 7)]  # augmented, and plain
    want = torch.stack([worker[it][0] for it in items])
    (img, u), y, idx = default_collate([raw[it] for it in items])
    assert img.dtype == torch.uint8 and img.shape[-1] == 32  # bytes at cache size cross to the device
    assert torch.isnan(u[-1]).all() and not torch.isnan(u[0]).any()
    got = augment_batch(img, u, 16)
    assert got.shape == want.shape
    assert (got - want).abs().mean() < 0.01
    # a wrong geometry (e.g. the rotation's sign) is far outside that tolerance
    flipped = u.clone()
    flipped[:, 4] = 1 - flipped[:, 4]
    assert (augment_batch(img, flipped, 16) - want)[: len(items) // 2].abs().mean() > 2 * (got - want).abs().mean()
    assert torch.equal(y, torch.stack([worker[it][1] for it in items]))


def test_training_with_device_transforms_reads_the_raw_cache(cache32, phantom64, tmp_path, monkeypatch):
    from roi_consistency.model.config import config
    from roi_consistency.training import train
    monkeypatch.setattr(train, "augment_on_device", lambda device: True)  # what CUDA gets
    cfg = config(train_csv=str(phantom64["val"]), val_csv=str(phantom64["test"]), image_root=str(phantom64["images"]),
                 cache=str(cache32), img_size=32, backbone="resnet18", pretrained=False, batch_size=16,
                 accum_steps=1, epochs=1, mask_epochs=1, lr=1e-3, workers=0, save=str(tmp_path / "m.pt"),
                 classes=list(FINDINGS))
    data = train.build_data(cfg, train.setup_runtime("cpu"))
    assert data.train.raw and isinstance(data.train[(0, 1)][0], tuple)  # uint8 rows and augmentation parameters
    result = train.fit(cfg)
    assert result["step"] > 0 and 0 <= result["metrics"]["val_mean_auroc"] <= 1


def test_normal_mean_image_averages_only_images_without_findings(phantom64):
    from roi_consistency.data.dataset import normal_mean_image
    ds = ImageCSVDataset(phantom64["val"], phantom64["images"], 16, list(FINDINGS))
    normal = [i for i in range(len(ds)) if ds.labels[i].sum() == 0]
    assert 0 < len(normal) < len(ds)
    want = torch.stack([ds[i][0] for i in normal]).mean(dim=0)
    torch.testing.assert_close(normal_mean_image(ds), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(normal_mean_image(ds, limit=3), torch.stack([ds[i][0] for i in normal[:3]]).mean(0))
