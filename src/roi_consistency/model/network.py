"""The ROI-consistency model: a torchvision classifier, a mask network that explains it, and the fill.

Input is a batch of one-channel images in [0, 1]. The model repeats them to three channels and
normalises with the ImageNet mean/std; `model(x)` is the classifier's logits on the full image.

A removed pixel takes the value of the fill: the ImageNet mean intensity (0 after normalisation,
`fill="mean"`, the reference: `crop = x * m`, `drop = x * (1 - m)`), or the same pixel of the mean
normal training image (`fill="normal"`: `crop = x*m + f*(1-m)`, `drop = x*(1-m) + f*m`), so that
removing a region shows what a chest without findings has there instead of a flat grey patch, which
in a lung looks like an opacity itself. The crop keeps only the region; the drop removes it.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from roi_consistency.model.backbones import build_backbone
from roi_consistency.model.mask_nets import MASK_NETS, FeatureMaskNet, mask_net_name

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Explanation(NamedTuple):
    maps: torch.Tensor  # [B,1,H,W] float32, higher = more relevant (before any sigmoid)
    cls: torch.Tensor | None  # the class each map explains [B], or None for the reference's class-free map
    full: torch.Tensor | None  # the backbone's logits on the image when they came free with the map


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module):
    """BatchNorm still normalises with batch statistics but does not fold them into its running
    statistics: crop and drop images must not shift the statistics used on full images at test time."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


class JoinedColumns:
    """A forward hook that appends to the classifier's logits [B,C] one column per group of classes: the
    group's highest logit (the sigmoid keeps the order, so its probability is the group's highest)."""

    def __init__(self, groups: list[list[int]]):
        self.groups = groups

    def __call__(self, module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out, *(out[:, g].amax(1, keepdim=True) for g in self.groups)], 1)


class ROIModel(nn.Module):
    """A classifier (`backbone`), the mask network that explains it, and the fill of removed pixels."""

    def __init__(self, backbone: nn.Module, mask_net: nn.Module, keep_ratio: float = 0.1):
        super().__init__()
        self.backbone, self.mask_net, self.keep_ratio = backbone, mask_net, keep_ratio
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # BatchNorm in training mode would pool statistics over full and masked images: such a backbone
        # gets one call per kind of image (see logits); a LayerNorm one a single fused call.
        self.fused = not has_batchnorm(backbone)
        # [1,1,H,W] in [0,1] for fill="normal" (set_fill); a buffer, so it follows .to(device), but not in
        # the backbone/mask state dicts: checkpoints store it on its own.
        self.register_buffer("fill_image", None, persistent=False)
        # the operating points chosen on the validation set ({"rule", "values": {class: p}, ...}), or None
        self.thresholds: dict | None = None
        # where the weights were trained (runtime.environment), or None for a checkpoint that predates it
        self.trained_on: dict | None = None
        self.joined: dict[int, list[int]] = {}  # output columns added by `join`: column -> the classes it joins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits [B,C] on one-channel images x [B,1,H,W] in [0, 1]."""
        return self.backbone(self.normalize(x))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def to_gray(self, xn: torch.Tensor) -> torch.Tensor:
        """Undo normalize for [...,3,H,W]: one channel in [0, 1] (a removed pixel shows its fill)."""
        return (xn * self.std[0] + self.mean[0]).mean(-3).clamp(0, 1)

    def set_fill(self, image: torch.Tensor | None) -> None:
        """The image whose pixels replace removed ones (None: the ImageNet mean, i.e. 0 after normalising)."""
        self.fill_image = None if image is None else image.reshape(1, 1, *image.shape[-2:]).float().to(
            self.mean.device)

    def fill_for(self, xn: torch.Tensor) -> torch.Tensor:
        """What a removed pixel shows, in normalised space at xn's size (0: the ImageNet mean)."""
        if self.fill_image is None:
            return xn.new_zeros(1, 1, 1, 1)
        f = self.fill_image
        if f.shape[-2:] != xn.shape[-2:]:
            f = F.interpolate(f, size=xn.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
        return self.normalize(f).to(xn.dtype)

    def crop_drop(self, xn: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the region kept, the rest filled; the region filled, the rest kept), in normalised space."""
        f = self.fill_for(xn)
        return xn * m + f * (1 - m), xn * (1 - m) + f * m

    @torch.no_grad()
    def crop_drop_probs(self, xn: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities [P,C] on the crop and on the drop of the region m, in one backbone call."""
        p = torch.sigmoid(self.backbone(torch.cat(self.crop_drop(xn, m.to(xn.dtype)))).float())
        return p[: len(xn)], p[len(xn):]

    def explain(self, xn: torch.Tensor, cls: torch.Tensor | None = None) -> Explanation:
        """The learned map of each image of xn (normalised). For the method's head, cls [B] picks the class
        each map explains (None or -1: the most probable); the reference's map ignores it."""
        if isinstance(self.mask_net, FeatureMaskNet):
            return Explanation(*self.mask_net(xn, self.backbone, self.own_class(xn, cls), self.fill_for(xn)))
        return Explanation(self.mask_net(xn).float(), None, None)

    def join(self, columns: dict[int, list[int]]) -> None:
        """Add output columns after the classifier's own, each the highest logit of some of its classes, so its
        probability is the highest of theirs: a dataset's one 'Nodule/Mass' label is then scored against a
        model with Nodule and Mass apart. A joined column's map explains, per image, its more probable class."""
        assert sorted(columns) == list(range(min(columns), min(columns) + len(columns))), "columns follow the model's"
        self.joined = dict(sorted(columns.items()))
        self.backbone.register_forward_hook(JoinedColumns(list(self.joined.values())))

    def own_class(self, xn: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor | None:
        """cls with each joined column (and, once joins exist, -1) replaced by the image's most probable class
        among those it joins, which is what the joined probability is on the full image."""
        if not self.joined or cls is None or not ((cls < 0) | (cls >= min(self.joined))).any():
            return cls
        with torch.no_grad():
            out = self.backbone(xn).float()
        cls = torch.where(cls >= 0, cls, out.argmax(1))
        for k, parts in self.joined.items():
            idx = torch.tensor(parts, device=out.device)
            cls = torch.where(cls == k, idx[out[:, idx].argmax(1)], cls)
        return cls

    def logits(self, full: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's logits on a batch of full images and on batches of masked ones. Fused into one
        call unless BatchNorm is training: then one call each, and only the full images move the
        running statistics."""
        if self.fused or not self.backbone.training:
            return list(self.backbone(torch.cat([full, *others])).split([len(full)] + [len(o) for o in others]))
        out = [self.backbone(full)]
        with frozen_bn_stats(self.backbone):
            out += [self.backbone(o) for o in others]
        return out


def build_model(model_cfg, method_cfg, n_classes: int, backbone_weights: dict | None = None,
                download: bool = False) -> ROIModel:
    """The model of a config's model and method groups: its classifier from `backbone_weights` (a state
    dict already read, `--weights`), else ImageNet's where `download`, else fresh (a checkpoint's
    weights then overwrite every tensor)."""
    backbone = build_backbone(model_cfg.backbone, n_classes, download=download, weights=backbone_weights,
                              weights_name=f"--weights {model_cfg.weights}", drop_path=model_cfg.drop_path)
    return ROIModel(backbone, MASK_NETS[mask_net_name(method_cfg)](backbone, n_classes), method_cfg.keep_ratio)
