"""ROAD's imputation, batched: the same fill as pytorch-grad-cam's per-image sparse solve."""
import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam.metrics.road import NoisyLinearImputer

from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.evaluation.road import impute
from roi_consistency.model.masks import random_maps, topk_mask
from roi_consistency.model.trained import load_trained


def films(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(n, 1, size // 8, size // 8, generator=g), size=(size, size), mode="bilinear")
    return (0.8 * smooth + 0.2 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)


def reference(x: torch.Tensor, keep: torch.Tensor, noise: float) -> torch.Tensor:
    imputer = NoisyLinearImputer(noise=noise)
    return torch.stack([imputer(x[i], keep[i, 0]) for i in range(len(x))])


def test_the_noiseless_fill_is_pytorch_grad_cams_solution():
    x = films(6, 40)
    for kept in (0.1, 0.5, 0.9):  # LeRF at r = 0.1 keeps 10 %, MoRF keeps 90 %
        keep = topk_mask(random_maps(x.shape, "cpu", torch.Generator().manual_seed(1)), kept)
        ours, theirs = impute(x, keep, noise=0, tol=1e-5), reference(x, keep, 0)
        removed = keep.expand_as(x) < 0.5
        assert (ours - theirs).abs()[removed].mean() < 1e-4, kept
        assert torch.equal(ours[~removed], x[~removed])  # kept pixels are untouched
        assert not torch.allclose(ours[removed], x[removed], atol=1e-3)  # and removed ones really change


def test_each_channel_is_filled_alike_and_the_noise_is_seeded():
    gray = films(2, 32)
    keep = topk_mask(random_maps(gray.shape, "cpu", torch.Generator().manual_seed(2)), 0.3)
    rgb = impute(gray.expand(-1, 3, -1, -1), keep, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])
    again = impute(gray.expand(-1, 3, -1, -1), keep, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rgb, again)
    noisy, clean = impute(gray, keep, generator=torch.Generator().manual_seed(0)), impute(gray, keep, noise=0)
    assert 0.005 < (noisy - clean)[keep < 0.5].std() < 0.015  # ROAD's 0.01, on the removed pixels only


def test_the_model_sees_the_same_probabilities_as_with_pytorch_grad_cams_imputer(phantom64, trained64):
    """The figure ROAD reports is a probability: within 0.01 of the reference imputer's, in both orders."""
    model, cfg = load_trained(trained64)
    ds = ImageCSVDataset(phantom64["test"], phantom64["images"], cfg.model.img_size, cfg.data.classes)
    x = torch.stack([ds[i][0] for i in range(16)])
    logits = random_maps(x.shape, "cpu", torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    for order, kept in (("MoRF", 0.9), ("LeRF", 0.1)):
        keep = topk_mask(logits, kept)
        with torch.no_grad():
            p = [torch.sigmoid(model.backbone(model.normalize(v))) for v in
                 (impute(x, keep, generator=torch.Generator().manual_seed(0)), reference(x, keep, 0.01))]
        gap = (p[0] - p[1]).abs().mean().item()
        assert gap < 0.01, (order, gap)
        assert np.isfinite(gap)
