"""The ROI-consistency model: a torchvision classifier, a mask network that explains it, and the fill.

Input is a batch of one-channel images in [0, 1]. The model repeats them to three channels and
normalises with the ImageNet mean/std; `model(x)` is the classifier's logits on the full image.

A removed pixel takes the value of the fill: the ImageNet mean intensity (0 after normalisation,
`fill="mean"`, the reference: `crop = x * m`, `drop = x * (1 - m)`), or the same pixel of the mean
normal training image (`fill="normal"`: `crop = x*m + f*(1-m)`, `drop = x*(1-m) + f*m`), so that
removing a region shows what a chest without findings has there instead of a flat grey patch, which
in a lung looks like an opacity itself.

The binary mask keeps exactly k = round(keep_ratio * H * W) pixels per image: we rank the map and
scatter ones at the top-k indices (a threshold at the k-th value would keep every tied pixel, and a
saturated sigmoid ties many). A straight-through estimator (`hard + (soft - soft.detach())`) lets the
crop and drop losses reach the mask network.

Two mask networks, behind one constructor signature (MASK_NETS): `features_grad`, the method's head on
the classifier's own features and attribution, one map per class; and `tiny`, the reference's
3->16->32->1 convolutions on the image.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from roi_consistency.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def topk_mask(logits: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Binary mask [B,1,H,W] with exactly round(keep_ratio*H*W) ones per image (at least one)."""
    b, _, h, w = logits.shape
    k = max(1, round(keep_ratio * h * w))
    idx = logits.reshape(b, -1).float().topk(k, dim=1).indices
    hard = torch.zeros(b, h * w, device=logits.device, dtype=torch.float32)
    return hard.scatter_(1, idx, 1.0).reshape(b, 1, h, w)


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Forward value exactly `hard` (soft - soft.detach() is exactly zero), gradient of `soft`."""
    return hard + (soft - soft.detach())


def binary_mask(logits: torch.Tensor, keep_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the top-k mask with the sigmoid's straight-through gradient, the sigmoid itself)."""
    soft = torch.sigmoid(logits)
    return straight_through(topk_mask(logits.detach(), keep_ratio), soft), soft


def random_mask_logits(shape: tuple[int, ...], device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Smooth random logits: noise at 1/8 resolution, upsampled, so a random top-k mask is a few
    blobs of the same area as a learned region rather than scattered single pixels."""
    b, _, h, w = shape
    low = torch.rand(b, 1, max(1, h // 8), max(1, w // 8), generator=generator)
    return F.interpolate(low.to(device), size=(h, w), mode="bilinear", align_corners=False)


class MaskNet(nn.Module):
    """The reference mask network: 3->16->32->1 3x3 convs with ReLU on the image; returns logits."""

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


class Explanation(NamedTuple):
    logits: torch.Tensor  # the map before the sigmoid, [B,1,H,W] float32
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
    def kept_and_removed(self, xn: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities [P,C] with the region m kept alone (crop) and removed (drop), in one backbone call."""
        p = torch.sigmoid(self.backbone(torch.cat(self.crop_drop(xn, m.to(xn.dtype)))).float())
        return p[: len(xn)], p[len(xn):]

    def explain(self, xn: torch.Tensor, cls: torch.Tensor | None = None) -> Explanation:
        """The learned map of each image of xn (normalised). For the method's head, cls [B] picks the class
        each map explains (None or -1: the most probable); the reference's map ignores it."""
        if isinstance(self.mask_net, FeatureMaskNet):
            return Explanation(*self.mask_net(xn, self.backbone, cls, self.fill_for(xn)))
        return Explanation(self.mask_net(xn).float(), None, None)

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


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last nn.Linear (every torchvision classifier ends in one) for num_classes outputs."""
    name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name, last = n, m
    if last is None:
        raise UserError("this backbone has no final nn.Linear classifier to replace")
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_classes))


def build_backbone(name: str, num_classes: int, pretrained: bool = False, weights: str | None = None,
                   drop_path: float = 0.0) -> nn.Module:
    """Any torchvision classification model by name, with a num_classes head."""
    import torchvision
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(f"--backbone {name}: not a torchvision classification model; e.g. resnet18, "
                        "resnet50, densenet121, convnext_tiny, convnext_base, efficientnet_b0")
    kwargs = {}
    if name.startswith(("convnext", "swin", "efficientnet", "maxvit")):
        kwargs["stochastic_depth_prob"] = drop_path  # also overrides torchvision's heavy built-in default
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if pretrained and not weights:
        w = torchvision.models.get_model_weights(name).DEFAULT
        try:
            model.load_state_dict(w.get_state_dict(progress=True, check_hash=True))
        except Exception as exc:  # URLError, HTTPError, hash mismatch: all mean "no weights"
            raise UserError(f"could not fetch the ImageNet weights {w} for {name} ({exc}). "
                            "Pass --weights PATH to a local state dict, or --no-pretrained to start "
                            "from scratch.") from None
    _replace_head(model, num_classes)
    if weights:
        load_matching(model, weights)
    return model


def load_matching(model: nn.Module, path: str) -> None:
    """Load a local state dict (or the backbone of a checkpoint of this tool), keeping only tensors whose
    name and shape match (a 1000-class ImageNet head is skipped). Refuse files that match almost
    nothing: wrong architecture."""
    from roi_consistency.checkpoint import safe_load
    if not Path(path).is_file():
        raise UserError(f"--weights {path}: file not found")
    sd = safe_load(Path(path), "--weights")
    if isinstance(sd, dict) and "backbone" in sd:  # one of our own checkpoints
        sd = sd["backbone"]
    own = model.state_dict()
    keep = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if len(keep) < 0.9 * (len(own) - 2):
        raise UserError(f"--weights {path}: only {len(keep)} of {len(own)} tensors match this backbone; "
                        "is it a state dict for the same --backbone?")
    model.load_state_dict(keep, strict=False)


def build_model(model_cfg, method_cfg, n_classes: int, load_pretrained: bool = True) -> ROIModel:
    """The model of a config's model and method groups. load_pretrained=False when a checkpoint will
    overwrite every weight."""
    backbone = build_backbone(model_cfg.backbone, n_classes, pretrained=model_cfg.pretrained and load_pretrained,
                              weights=model_cfg.weights if load_pretrained else None, drop_path=model_cfg.drop_path)
    return ROIModel(backbone, MASK_NETS[mask_net_name(method_cfg)](backbone, n_classes), method_cfg.keep_ratio)


def mask_net_name(method_cfg) -> str:
    """The method's head, or the reference's tiny net for joint training."""
    return "tiny" if method_cfg.joint else "features_grad"
