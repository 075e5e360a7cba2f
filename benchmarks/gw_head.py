"""Round 15's candidate mask head (EXPERIMENTS.md): the head reads only gradient-weighted features,
relu(dy_c/dA * A) of the explained class at the classifier's stages of stride 8 to 32 (LayerCAM's
weighting, channel by channel), with one output shared by every class. The method's head reads the raw
features at strides 4 to 32 and gradient x (input - fill), with one output per class.

Usage: python benchmarks/gw_head.py COMMAND ARGS...   (`roi-consistency COMMAND ARGS...` with this head:
train, evaluate, sanity; a checkpoint it trains loads only through this script)
"""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from roi_consistency.evaluation import sanity
from roi_consistency.model import mask_nets
from roi_consistency.model.mask_nets import FeatureMaskNet, captured, explained_class, feature_layers


def weighted_features(backbone: nn.Module, xn: torch.Tensor, cls: torch.Tensor | None, layers):
    """relu(gradient x activation) of the explained class's logit at each of the stages `layers`, the
    explained class (cls, or the most probable where -1) and the logits."""
    was_training = backbone.training
    backbone.eval()
    feats = {}
    hooks = [backbone.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o))
             for n in layers]
    try:
        with torch.enable_grad():
            out = backbone(xn.detach().requires_grad_(True))
            explained = explained_class(out, cls)
            fs = [feats[n] for n in layers]
            gs = torch.autograd.grad(out.gather(1, explained[:, None]).sum(), fs)
    finally:
        for h in hooks:
            h.remove()
        backbone.train(was_training)
    return [(g * f).detach().float().relu() for f, g in zip(fs, gs)], explained, out.detach()


class GradFeatureMaskNet(FeatureMaskNet):  # a FeatureMaskNet to ROIModel.explain: called with the backbone
    def __init__(self, channels: tuple[int, ...], layers: tuple[str, ...], width: int = 32):
        nn.Module.__init__(self)
        self.proj = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, 1, 1))
        self.layers = layers

    def forward(self, xn, backbone, cls, fill):
        ws, explained, out = weighted_features(backbone, xn, cls, self.layers)
        size = ws[0].shape[-2:]
        z = 0
        for proj, w in zip(self.proj, ws):
            w = w / (w.flatten(1).std(1).view(-1, 1, 1, 1) + 1e-8)  # scale-free, as the method's attribution
            z = z + F.interpolate(proj(w), size=size, mode="bilinear", align_corners=False)
        maps = F.interpolate(self.head(z), size=xn.shape[-2:], mode="bilinear", align_corners=False).float()
        maps = (maps - maps.mean(dim=(2, 3), keepdim=True)) / (maps.std(dim=(2, 3), keepdim=True) + 1e-6)
        return maps, explained, out


def features_gw(backbone: nn.Module, n_classes: int) -> GradFeatureMaskNet:
    layers = feature_layers(backbone)[1:]  # strides 8-32: stride 4's weighted features light the marker
    was_training = backbone.training
    with captured(backbone, layers) as feats, torch.no_grad():
        backbone.eval()(torch.zeros(1, 3, 64, 64, device=next(backbone.parameters(), torch.empty(0)).device))
    backbone.train(was_training)
    return GradFeatureMaskNet(tuple(feats[n].shape[1] for n in layers), layers)


def _train_with_this_head(cmd: list[str], **kw):
    """`sanity` retrains the mask stage in a process of its own (`python -m roi_consistency train`): run it
    through this script instead, so that the retrained head is this one too."""
    at = cmd.index("-m")
    return subprocess.run([*cmd[:at], __file__, *cmd[at + 2:]], **kw)


def install() -> None:
    """Every model built from now on in this process, and in the `sanity` retrainings it starts, gets this
    head in place of the method's."""
    mask_nets.MASK_NETS["features_grad"] = features_gw
    sanity.subprocess = SimpleNamespace(run=_train_with_this_head, PIPE=subprocess.PIPE, STDOUT=subprocess.STDOUT)


if __name__ == "__main__":
    install()
    from roi_consistency.cli import main
    main(sys.argv[1:])
