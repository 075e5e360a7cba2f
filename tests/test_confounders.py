"""The confounder audit (evaluation/confounders.py): a region the model relies on, and one it ignores, on
films whose classifier is transparent; maps that point at the region, and maps that never touch it."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from roi_consistency.data import nih
from roi_consistency.data.dataset import ImageCSVDataset, normal_mean_image
from roi_consistency.data.images import load_image
from roi_consistency.data.labels import FINDINGS
from roi_consistency.data.phantom import make_phantom
from roi_consistency.errors import UserError
from roi_consistency.evaluation.confounders import (
    IGNORES,
    RELIES,
    Audit,
    audit,
    confounders_section,
    mirrored,
    peak_distance,
    read_confounders,
    region_measures,
)
from roi_consistency.evaluation.explainers import BoxOracle
from roi_consistency.evaluation.metrics import box_mask
from roi_consistency.model.mask_nets import MaskNet
from roi_consistency.model.network import IMAGENET_MEAN, IMAGENET_STD, ROIModel

HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


class Marker(nn.Module):
    """A transparent classifier: p(Pneumothorax) follows the brightest 4x4 patch above the film's mean, so a
    bright marker anywhere raises it; every other finding is absent."""

    def forward(self, xn):
        x = xn.mean(1, keepdim=True)
        peak = nn.functional.avg_pool2d(x, 4, stride=1).amax(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))
        out = torch.full((len(x), 14), -5.0)
        out[:, FINDINGS.index("Pneumothorax")] = 6 * peak - 3
        return out


class Far:
    """A map whose maximum sits in the image's corner farthest from the pair's region, 0 on the region."""
    name, ties = "far", False

    def __call__(self, pairs):
        h, w = pairs.xn.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        maps = []
        for (x0, y0, bw, bh), in pairs.boxes:
            cx, cy = (0.0 if x0 + bw / 2 > w / 2 else w), (0.0 if y0 + bh / 2 > h / 2 else h)
            m = -((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
            m = m - m.min() + 1.0
            m[torch.from_numpy(box_mask((h, w), (x0, y0, bw, bh)))] = 0.0
            maps.append(m)
        return torch.stack(maps)[:, None]


def marked_films(tmp_path):
    """16 grey 48-px films; the even ones carry a bright 6x6 marker. The confounder file lists, for
    Pneumothorax, the marker's box on every even film and a patch of plain background on every odd one."""
    rng = np.random.default_rng(0)
    rows, listed = ["image,labels"], [HEADER]
    for i in range(16):
        img = 0.45 + 0.02 * rng.standard_normal((48, 48))
        name = f"{i:08d}_000.png"
        x0, y0 = (int(v) for v in rng.integers(4, 36, size=2))
        if i % 2 == 0:
            img[y0:y0 + 6, x0:x0 + 6] += 0.45
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(tmp_path / name)
        rows.append(f"{name},Normal")
        listed.append(f"{name},Pneumothorax,{x0},{y0},6,6\n")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "markers.csv").write_text("".join(listed) + "99999999_000.png,Pneumothorax,1,1,4,4\n")
    return ImageCSVDataset(tmp_path / "t.csv", tmp_path, 48, list(FINDINGS))


def test_reliance_separates_a_marker_the_model_uses_from_background_it_ignores(tmp_path):
    ds = marked_films(tmp_path)
    listed, left_out = read_confounders(str(tmp_path / "markers.csv"), ds, list(FINDINGS), 48)
    assert len(listed) == 16 and left_out == ["99999999_000.png"]  # a listed film the test set lacks
    model = ROIModel(Marker(), MaskNet()).eval()  # removed pixels show the ImageNet mean: about the background
    a = audit(model, ds, listed, [BoxOracle(), Far()], 0.1, batch_size=5, seed=0, n_examples=3)
    cf = confounders_section(a, "markers.csv", left_out, seed=0)
    s = cf["sets"]
    assert s["all"]["n_pairs"] == 16 and s["relied"]["n_pairs"] == 8 and s["ignored"]["n_pairs"] == 8
    for kind in ("fill", "road"):  # the marker carries p; plain background does not
        assert s["relied"]["reliance"][kind]["mean"] > 0.3 and s["relied"]["reliance"][kind]["share_above"] == 1.0
        assert abs(s["ignored"]["reliance"][kind]["mean"]) < IGNORES and s["ignored"]["reliance"][kind]["ci95"]
    assert s["relied"]["reliance"]["log_odds"]["mean"] > 1.0 and abs(s["ignored"]["reliance"]["log_odds"]["mean"]) < 0.1
    oracle, far = s["all"]["maps"]["boxes"], s["all"]["maps"]["far"]
    assert all(oracle[m]["mean"] == 1.0 for m in ("pointing", "pointing_tolerant", "share", "energy")), oracle
    assert all(far[m]["mean"] == 0.0 for m in ("pointing", "pointing_tolerant", "share", "energy")), far
    # the markers sit anywhere, so a box's mirror image seldom meets it: the oracle covers it far less
    assert oracle["placebo_share"]["mean"] < 0.5 and oracle["placebo_share"]["ci95"]
    assert cf["n_images"] == 16 and cf["relies_above"] == RELIES and len(a.examples) == 3
    assert {ex["image"] for ex in a.examples} <= {n for n in ds.names[::2]}  # relied-on pairs shown first


def test_the_drop_in_log_odds_shows_a_region_that_carries_a_small_probability():
    """p 0.01 -> 0.001 without the region: below the 0.02 that counts as ignored in p, yet the odds fall tenfold;
    p 0.9 -> 0.89: ignored both ways."""
    p_full, p_fill = np.array([0.01, 0.01, 0.9, 0.9]), np.array([0.001, 0.001, 0.89, 0.89])
    a = Audit(p_full, p_fill, p_fill, {}, np.arange(4), [])
    s = confounders_section(a, "f.csv", [], seed=0)["sets"]
    assert s["ignored"]["n_pairs"] == 4 and s["ignored"]["reliance"]["fill"]["mean"] < IGNORES
    want = np.log(0.01 / 0.99) - np.log(0.001 / 0.999), np.log(0.9 / 0.1) - np.log(0.89 / 0.11)
    assert s["ignored"]["reliance"]["log_odds"]["mean"] == pytest.approx(np.mean(want))
    assert want[0] > 2.3 and s["ignored"]["reliance"]["log_odds"]["share_above"] is None


def test_pointing_is_strict_in_the_region_and_tolerant_just_outside():
    box = (10.0, 10.0, 4.0, 4.0)
    inside, beside = np.zeros((48, 48)), np.zeros((48, 48))
    inside[11, 11] = 1.0
    beside[11, 16] = 1.0  # its centre is 2.5 px right of the box
    assert peak_distance(inside, box) == 0.0 and peak_distance(beside, box) == pytest.approx(2.5)
    region = box_mask((48, 48), box)
    hit = region_measures(beside, beside > 0, region, box, 15 / 224 * 48, region)
    assert hit["pointing"] == 0.0 and hit["pointing_tolerant"] == 1.0 and hit["share"] == 0.0
    half = np.where(region, 1.0, 0.0) + np.where(np.roll(region, 4, axis=1), 1.0, 0.0)  # half its mass on the box
    assert region_measures(half, half > 0, region, box, 3.0, region)["energy"] == pytest.approx(0.5)


def test_the_mirrored_region_tells_a_map_on_the_region_from_one_on_that_place_in_every_film():
    box = (4.0, 10.0, 6.0, 6.0)
    region, placebo = box_mask((48, 48), box), box_mask((48, 48), mirrored(box, 48))
    assert mirrored(box, 48) == (38.0, 10.0, 6.0, 6.0) and placebo[10:16, 38:44].all() and placebo.sum() == 36
    on_region = region_measures(region.astype(float), region, region, box, 3.0, placebo)
    both_corners = region_measures((region | placebo).astype(float), region | placebo, region, box, 3.0, placebo)
    assert on_region["share"] == 1.0 and on_region["placebo_share"] == 0.0
    assert both_corners["share"] == 1.0 and both_corners["placebo_share"] == 1.0


def test_a_confounder_file_naming_a_finding_the_model_does_not_score_is_refused(tmp_path):
    ds = marked_films(tmp_path)
    (tmp_path / "bad.csv").write_text(HEADER + "00000000_000.png,Pneumothorax,1,1,4,4\n00000001_000.png,Mass,1,1,4,4\n")
    with pytest.raises(UserError, match="bad.csv: findings this model does not score: Mass"):
        read_confounders(str(tmp_path / "bad.csv"), ds, ["Pneumothorax"], 48)
    (tmp_path / "none.csv").write_text(HEADER + "elsewhere.png,Pneumothorax,1,1,4,4\n")
    with pytest.raises(UserError, match="none.csv: none of its images is in the test CSV"):
        read_confounders(str(tmp_path / "none.csv"), ds, list(FINDINGS), 48)


class TagReader(nn.Module):
    """A classifier that sees only the film's top corners, outside the body: p(Pneumothorax) is high where
    something there is brighter than any anatomy, as the shortcut phantom's marker is."""

    def forward(self, xn):
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        gray = (xn * std + mean).mean(1)
        h, w = gray.shape[-2:]
        band = gray[:, : int(0.17 * h)]
        corners = torch.cat([band[..., : int(0.16 * w)], band[..., int(0.79 * w):]], -1)
        out = torch.full((len(xn), 14), -5.0)
        out[:, FINDINGS.index("Pneumothorax")] = 12 * (corners.flatten(1).amax(1) - 0.5)
        return out


def test_on_the_shortcut_phantom_removal_measures_what_the_marker_free_twins_show(tmp_path):
    data = tmp_path / "nih"
    make_phantom(data, n_images=400, size=64, seed=2, workers=2, progress=False, shortcut="Pneumothorax")
    nih.unify(str(data), progress=False)
    nih.make_csv(str(data), out_dir=str(tmp_path / "csv"), val_fraction=0.2, seed=0)
    test, train = (ImageCSVDataset(tmp_path / "csv" / f"nih_roi_{s}.csv", data / "images", 64, list(FINDINGS))
                   for s in ("test", "train"))
    model = ROIModel(TagReader(), MaskNet()).eval()
    model.set_fill(normal_mean_image(train))  # as training makes it: the mean normal training film
    listed, _ = read_confounders(str(data / "confounders.csv"), test, list(FINDINGS), 64)
    a = audit(model, test, listed, [BoxOracle()], 0.1, batch_size=16, seed=0)
    twins = torch.stack([load_image(data / "twins" / test.names[r], 64) for r in a.rows]).float() / 255
    with torch.no_grad():
        p_twin = torch.sigmoid(model(twins))[:, FINDINGS.index("Pneumothorax")].numpy()
    truth = (a.p_full - p_twin).mean()
    assert len(a.rows) >= 20 and truth > 0.5, truth  # the model relies on the marker: the twins say so
    for estimate in (a.p_full - a.p_fill, a.p_full - a.p_road):
        assert abs(estimate.mean() - truth) < 0.1, (estimate.mean(), truth)
