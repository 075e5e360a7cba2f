"""The mask networks, behind one constructor signature (MASK_NETS[name](backbone, n_classes)):

- `features_grad`, the method's head on the classifier's own features and attribution, one map per class;
- `tiny`, the reference's 3->16->32->1 convolutions on the image (`--preset seed`).

A mask network returns maps (higher: more relevant); masks.topk_mask turns them into the binary mask.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from roi_consistency.errors import UserError


class MaskNet(nn.Module):
    """The reference mask network: 3->16->32->1 3x3 convs with ReLU on the image; returns its map."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# The stages the method's head reads, strides 4-32 (small lesions need the stride-4 stage: a nodule at
# 128 px is about one stride-8 cell).
FEATURE_LAYERS = {"resnet": ("layer1", "layer2", "layer3", "layer4"),
                  "convnext": ("features.1", "features.3", "features.5", "features.7")}


def feature_layers(backbone: nn.Module) -> tuple[str, ...]:
    names = {n for n, _ in backbone.named_modules()}
    for layers in FEATURE_LAYERS.values():
        if all(n in names for n in layers):
            return layers
    raise UserError("the method's mask head reads ResNet and ConvNeXt feature stages; pick such a --backbone "
                    "(or --preset seed, whose mask net reads the image)")


@contextlib.contextmanager
def captured(backbone: nn.Module, layers: tuple[str, ...]):
    """{layer name: its output, detached} for the forward passes run inside the block."""
    feats: dict[str, torch.Tensor] = {}
    hooks = [backbone.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o.detach()))
             for n in layers]
    try:
        yield feats
    finally:
        for h in hooks:
            h.remove()


def explained_class(logits: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
    """cls per image, the most probable class where cls is None or -1."""
    top = logits.detach().float().argmax(1)
    return top if cls is None else torch.where(cls >= 0, cls, top)


def class_attribution(backbone: nn.Module, xn: torch.Tensor, layers: tuple[str, ...], cls: torch.Tensor | None,
                      fill: torch.Tensor | float):
    """One pass with input gradients: the feature maps (detached), the logits, the class each image is
    explained for (cls, or the most probable where cls is None or -1), and gradient x (input - fill) of
    that class's logit, [B,1,H,W]: the first-order change of the logit when each pixel is removed."""
    was_training = backbone.training
    backbone.eval()  # joint training too: running statistics, no drop-path noise in the attribution
    try:
        with captured(backbone, layers) as feats, torch.enable_grad():
            xg = xn.detach().requires_grad_(True)
            out = backbone(xg)
            explained = explained_class(out, cls)
            g, = torch.autograd.grad(out.gather(1, explained[:, None]).sum(), xg)
    finally:
        backbone.train(was_training)
    a = (g * (xn.detach() - fill)).sum(1, keepdim=True).float()
    return [feats[n].float() for n in layers], out.detach(), explained, a


class FeatureMaskNet(nn.Module):
    """The method's mask head: one map per class from the classifier's own features (four depths, 1x1
    convs, summed at the finest, a 3x3 conv, upsampled to the input) and, for the class it explains,
    the classifier's gradient x (input - fill): the first-order estimate of how much removing each pixel
    lowers that class's logit. Learning that from the crop and drop terms alone takes more than a CPU
    budget: their straight-through gradient is this same quantity, one noisy image at a time, and it
    stops once the region holds the evidence. The head learns, against those terms, which of that
    evidence the region should hold. The backbone is passed at call time, so its weights are not stored
    twice."""

    def __init__(self, channels: tuple[int, ...], out_channels: int, layers: tuple[str, ...], width: int = 32):
        super().__init__()
        self.grad_proj = nn.Conv2d(2, width, 1)
        self.proj = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, out_channels, 1))
        self.layers = layers

    def forward(self, xn: torch.Tensor, backbone: nn.Module, cls: torch.Tensor | None, fill: torch.Tensor | float):
        """(the explained class's map [B,1,H,W], standardised per image; the explained class [B]: cls, or
        the most probable class where cls is None or -1; the backbone's logits on xn)."""
        feats, out, explained, a = class_attribution(backbone, xn, self.layers, cls, fill)
        size = feats[0].shape[-2:]
        z = sum(F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) for p, f in zip(self.proj, feats))
        # Scale-free (the classifier's confidence is not the map's business), evidence for and against
        # the class as two channels, averaged over each feature cell: one pixel's gradient is noisy.
        a = a / (a.flatten(1).std(1).view(-1, 1, 1, 1) + 1e-8)
        z = z + self.grad_proj(F.adaptive_avg_pool2d(torch.cat([a.relu(), (-a).relu()], 1), size))
        maps = F.interpolate(self.head(z), size=xn.shape[-2:], mode="bilinear", align_corners=False).float()
        # Rank is all top-k uses; standardising keeps the sigmoid out of saturation, where the
        # straight-through gradient would vanish (the whole mask drifting to 1.0).
        maps = (maps - maps.mean(dim=(2, 3), keepdim=True)) / (maps.std(dim=(2, 3), keepdim=True) + 1e-6)
        return maps.gather(1, explained.view(-1, 1, 1, 1).expand(-1, 1, *maps.shape[-2:])), explained, out


def features_grad(backbone: nn.Module, n_classes: int) -> FeatureMaskNet:
    layers = feature_layers(backbone)
    was_training = backbone.training
    with captured(backbone, layers) as feats, torch.no_grad():  # probe the channel counts
        backbone.eval()(torch.zeros(1, 3, 64, 64, device=next(backbone.parameters(), torch.empty(0)).device))
    backbone.train(was_training)
    return FeatureMaskNet(tuple(feats[n].shape[1] for n in layers), n_classes, layers)


# Every mask network is built as MASK_NETS[name](backbone, n_classes).
MASK_NETS = {"features_grad": features_grad, "tiny": lambda backbone, n_classes: MaskNet()}


def mask_net_name(method_cfg) -> str:
    """The method's head, or the reference's tiny net for joint training."""
    return "tiny" if method_cfg.joint else "features_grad"
