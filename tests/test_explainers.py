"""The explainers' registry and the controls that show what the learned head adds (evaluate --maps)."""
import pytest
import torch
from torch import nn

from roi_consistency.errors import UserError
from roi_consistency.evaluation.explainers import Anomaly, Attribution, Pairs, build_explainers, gradcam_layer
from roi_consistency.model.backbones import build_backbone
from roi_consistency.model.config import config
from roi_consistency.model.mask_nets import MaskNet
from roi_consistency.model.network import ROIModel


class Linear(nn.Module):
    """logit_c = sum(w_c * xn): its gradient is w, so its attribution is w x (xn - fill), summed over channels."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, xn):
        return (xn[:, None] * self.w[None]).flatten(2).sum(-1)


def pairs_of(xn, cls):
    return Pairs(xn, torch.tensor(cls), [[] for _ in cls])


def test_attribution_is_the_gradient_times_the_difference_from_the_fill():
    torch.manual_seed(0)
    w = torch.randn(14, 3, 16, 16)
    model = ROIModel(Linear(w), MaskNet()).eval()
    model.set_fill(torch.rand(1, 16, 16))
    xn = model.normalize(torch.rand(2, 1, 16, 16))
    got = Attribution(model)(pairs_of(xn, [3, 7]))
    want = torch.stack([(w[c] * (xn[k] - model.fill_for(xn)[0])).sum(0, keepdim=True) for k, c in enumerate([3, 7])])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_anomaly_map_finds_what_departs_from_the_fill_whatever_the_model():
    model = ROIModel(Linear(torch.zeros(14, 3, 32, 32)), MaskNet()).eval()  # a model that looks at nothing
    fill = torch.full((1, 32, 32), 0.3)
    model.set_fill(fill)
    x = fill[None].clone()
    x[..., 4:9, 20:25] = 0.95  # a bright marker
    m = Anomaly(model)(pairs_of(model.normalize(x), [0]))
    y, xx = divmod(int(m[0, 0].argmax()), 32)
    assert m.shape == (1, 1, 32, 32) and 4 <= y < 9 and 20 <= xx < 25


def test_explainers_are_built_by_name_the_learned_map_first():
    backbone = build_backbone("resnet18", 14)
    model = ROIModel(backbone, MaskNet()).eval()
    made = build_explainers(["gradcam16", "anomaly", "random"], model, config(), seed=0)
    assert [e.name for e in made] == ["learned", "gradcam16", "anomaly", "random"]
    assert gradcam_layer(backbone, stride16=True) is backbone.layer3
    maps = made[1](pairs_of(model.normalize(torch.rand(2, 1, 64, 64)), [0, 5]))
    assert maps.shape == (2, 1, 64, 64)
    with pytest.raises(UserError, match="--maps .*unknown saliency; choose from learned, gradcam"):
        build_explainers(["saliency"], model, config(), seed=0)
