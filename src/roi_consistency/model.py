"""The ROI-consistency model: a torchvision backbone plus a small mask network.

Input is a batch of one-channel images in [0, 1]. The model repeats them to three channels and
normalises with the ImageNet mean/std. A removed pixel takes the value of the fill: the ImageNet mean
intensity (0 after normalisation, `--fill mean`, the reference: `crop = x * m`, `drop = x * (1 - m)`),
or the same pixel of the mean normal training image (`--fill normal`: `crop = x*m + f*(1-m)`,
`drop = x*(1-m) + f*m`), so that removing a region shows what a chest without findings has there
instead of a flat grey patch, which in a lung looks like an opacity itself.

The binary mask keeps exactly k = round(keep_ratio * H * W) pixels per image: we rank the mask
logits and scatter ones at the top-k indices. A threshold at the k-th value would keep every tied
pixel, and a saturated sigmoid ties many. A straight-through estimator (`hard + (soft - soft.detach())`)
lets the consistency and drop losses reach the mask network.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from roi_consistency.config import mask_head_of
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


def random_mask_logits(shape: tuple[int, ...], device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Smooth random logits: noise at 1/8 resolution, upsampled, so a random top-k mask is a few
    blobs of the same area as a learned region rather than scattered single pixels."""
    b, _, h, w = shape
    low = torch.rand(b, 1, max(1, h // 8), max(1, w // 8), generator=generator, device=device)
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


class MaskNet(nn.Module):
    """The reference mask network: 3->16->32->1 3x3 convs with ReLU; returns logits."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DilatedMaskNet(nn.Module):
    """A mask network that sees context: at half resolution, 3x3 convs dilated 1, 2, 4, 8 and 16 give
    a receptive field of about 130 input pixels (the reference net sees 7x7), then logits are
    upsampled to the input size."""

    def __init__(self, width: int = 24):
        super().__init__()
        layers = [nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        for d in (1, 2, 4, 8, 16):
            layers += [nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.net(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


# The stages the features mask nets read, coarse (strides 8-32) and fine (strides 4-32: small lesions
# need the stride-4 stage, a nodule at 128 px being about one stride-8 cell).
FEATURE_LAYERS = {"resnet": ("layer2", "layer3", "layer4"), "convnext": ("features.3", "features.5", "features.7")}
FINE_LAYERS = {"resnet": ("layer1",), "convnext": ("features.1",)}


def feature_layers(backbone: nn.Module, fine: bool = False) -> tuple[str, ...]:
    names = {n for n, _ in backbone.named_modules()}
    for family, layers in FEATURE_LAYERS.items():
        layers = FINE_LAYERS[family] + layers if fine else layers
        if all(n in names for n in layers):
            return layers
    raise UserError("--mask-net features supports ResNet and ConvNeXt backbones; use --mask-net dilated")


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


def backbone_features(backbone: nn.Module, xn: torch.Tensor, layers: tuple[str, ...]):
    """The classifier's own feature maps at three depths, and its logits on xn, which come free with
    them (no gradient: the mask must not reshape the classifier)."""
    with captured(backbone, layers) as feats, torch.no_grad():
        out = backbone(xn)
    return [feats[n].float() for n in layers], out


def class_attribution(backbone: nn.Module, xn: torch.Tensor, layers: tuple[str, ...], cls: torch.Tensor | None,
                      fill: torch.Tensor | float):
    """One pass with input gradients: the feature maps (detached), the logits, the class each image is
    explained for (cls, or the most probable where cls is None or -1), and gradient x (input - fill) of
    that class's logit, [B,1,H,W]: the first-order change of the logit when each pixel is removed."""
    was_training = backbone.training
    backbone.eval()  # joint training too: per-image (running) statistics, no drop-path noise in the attribution
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
    """A mask head on the classifier's own features (three depths, 1x1 convs, summed at the finest
    of them, a 3x3 conv, upsampled to the input): the mask sees what the classifier sees. The backbone
    is passed at call time, so its weights are not stored twice. With out_channels = number of classes
    it draws one map per class (`--mask-head per_class`).

    With grad=True (`--mask-net features_grad`) it also reads, for the class it explains, the classifier's
    gradient x (input - fill): the first-order estimate of how much removing each pixel lowers that
    class's logit. Learning that from the crop and drop terms alone takes more than a CPU budget: their
    straight-through gradient is this same quantity, one noisy image at a time, and it stops once the
    region holds the evidence, so a small lesion inside a large kept region is never made its peak.
    The head still learns, against those terms, which of that evidence the region should hold."""

    def __init__(self, channels: tuple[int, ...], width: int = 32, out_channels: int = 1, grad: bool = False):
        super().__init__()
        self.grad_proj = nn.Conv2d(2, width, 1) if grad else None
        self.proj = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, out_channels, 1))
        self.layers: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor, backbone: nn.Module, cls: torch.Tensor | None = None,
                fill: torch.Tensor | float = 0.0):
        """(mask logits [B,K,H,W], the backbone's logits on x, the class the logits were drawn for or
        None). With grad_proj (features_grad) the head also reads the attribution of class cls (-1 or
        None: the most probable class) relative to the fill, so every map belongs to one class."""
        explained = None
        if self.grad_proj is not None:
            feats, out, explained, a = class_attribution(backbone, x, self.layers, cls, fill)
        else:
            feats, out = backbone_features(backbone, x, self.layers)
        size = feats[0].shape[-2:]
        z = sum(F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) for p, f in zip(self.proj, feats))
        if self.grad_proj is not None:
            # Scale-free (the classifier's confidence is not the map's business), evidence for and against
            # the class as two channels, averaged over each feature cell: one pixel's gradient is noisy.
            a = a / (a.flatten(1).std(1).view(-1, 1, 1, 1) + 1e-8)
            z = z + self.grad_proj(F.adaptive_avg_pool2d(torch.cat([a.relu(), (-a).relu()], 1), size))
        return F.interpolate(self.head(z), size=x.shape[-2:], mode="bilinear", align_corners=False), out, explained


def make_feature_mask_net(backbone: nn.Module, out_channels: int = 1, fine: bool = False,
                          grad: bool = False) -> FeatureMaskNet:
    layers = feature_layers(backbone, fine)
    was_training = backbone.training
    feats, _ = backbone_features(backbone.eval(), torch.zeros(1, 3, 64, 64), layers)  # probe channel counts
    backbone.train(was_training)
    net = FeatureMaskNet(tuple(f.shape[1] for f in feats), out_channels=out_channels, grad=grad)
    net.layers = layers
    return net


MASK_NETS = {"tiny": MaskNet, "dilated": DilatedMaskNet, "features": make_feature_mask_net,
             "features_fine": lambda backbone, out_channels=1: make_feature_mask_net(backbone, out_channels, True),
             "features_grad": lambda backbone, out_channels=1: make_feature_mask_net(backbone, out_channels, True,
                                                                                     grad=True)}


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
    if drop_path and name.startswith(("convnext", "swin", "efficientnet", "maxvit")):
        kwargs["stochastic_depth_prob"] = drop_path
    elif name.startswith(("convnext", "swin")):
        kwargs["stochastic_depth_prob"] = 0.0  # override torchvision's heavy built-in default
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
    """Load a local state dict, keeping only tensors whose name and shape match (a 1000-class
    ImageNet head is skipped). Refuse files that match almost nothing: wrong architecture."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"--weights {path}: file not found") from None
    except Exception as exc:
        raise UserError(f"--weights {path}: not a loadable state dict ({exc})") from None
    if isinstance(sd, dict) and "backbone" in sd:  # one of our own checkpoints
        sd = sd["backbone"]
    own = model.state_dict()
    keep = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if len(keep) < 0.9 * (len(own) - 2):
        raise UserError(f"--weights {path}: only {len(keep)} of {len(own)} tensors match this backbone; "
                        "is it a state dict for the same --backbone?")
    model.load_state_dict(keep, strict=False)


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


def select_maps(maps: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """maps[b, cls[b]] as [B,1,H,W]."""
    return maps.gather(1, cls.view(-1, 1, 1, 1).expand(-1, 1, *maps.shape[-2:]))


class ROIModel(nn.Module):
    """Backbone + mask network. forward() returns the three logits and the masks."""

    def __init__(self, backbone: nn.Module, mask_net: nn.Module, keep_ratio: float = 0.1,
                 mode: str = "full", passes: str = "auto", mask_norm: str = "none"):
        super().__init__()
        self.mask_norm = mask_norm
        self.backbone, self.mask_net = backbone, mask_net
        self.keep_ratio, self.mode, self.passes = keep_ratio, mode, passes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # BatchNorm in training mode would pool statistics over [full; crop; drop].
        self.fused_in_training = passes == "fused" or (passes == "auto" and not has_batchnorm(backbone))
        # Set for the mask stage of two_stage training: the classifier is fixed, so the full image needs
        # no graph and crop/drop need gradients only with respect to their pixels.
        self.frozen_backbone = False
        # [1,1,H,W] in [0,1] for --fill normal (set_fill); a buffer, so it follows .to(device), but not in
        # the backbone/mask state dicts: checkpoints store it on its own.
        self.register_buffer("fill_image", None, persistent=False)

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

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def mask_maps(self, xn: torch.Tensor, cls: torch.Tensor | None = None):
        """Every learned map before the sigmoid, [B,K,H,W] float32 (K = 1 for a shared head, one per
        class for a per-class head), the backbone's logits on xn when the mask network computed
        them on the way (the features net does), else None, and the class the maps were drawn for
        when the mask network reads a class's attribution (else None)."""
        explained = None
        if isinstance(self.mask_net, FeatureMaskNet):
            fill = self.fill_for(xn) if self.mask_net.grad_proj is not None else 0.0
            maps, out, explained = self.mask_net(xn, self.backbone, cls, fill)
        else:
            maps, out = self.mask_net(xn), None
        maps = maps.float()
        if self.mask_norm == "standardize":
            # Rank is all top-k uses; standardising per image keeps the sigmoid out of saturation, where
            # the straight-through gradient would vanish (the whole mask drifting to 1.0).
            mu, sd = maps.mean(dim=(2, 3), keepdim=True), maps.std(dim=(2, 3), keepdim=True)
            maps = (maps - mu) / (sd + 1e-6)
        return maps, out, explained

    @property
    def class_specific(self) -> bool:
        """Is each map drawn for one class (a per-class head, or a head reading a class's attribution)?"""
        return isinstance(self.mask_net, FeatureMaskNet) and (
            self.mask_net.grad_proj is not None or self.mask_net.head[-1].out_channels > 1)

    def explain(self, xn: torch.Tensor, cls: torch.Tensor | None = None):
        """(map [B,1,H,W] before the sigmoid, the class each map explains [B] or None for a map that is
        not drawn for a class, the backbone's logits on xn if they came free or were needed, else None).
        For a class-specific map, cls picks the class per image; None or -1 means the most probable one."""
        maps, out, explained = self.mask_maps(xn, cls)
        if maps.shape[1] == 1:
            return maps, explained, out
        if explained is None:
            if out is None:
                with torch.no_grad():
                    out = self.backbone(xn)
            explained = explained_class(out, cls)
        return select_maps(maps, explained), explained, out

    def masks(self, xn: torch.Tensor, keep_ratio: float | None = None, cls: torch.Tensor | None = None) -> dict:
        """The learned map ("logits"), its sigmoid ("soft"), the binary mask with a straight-through
        gradient ("mask"), the explained class and the free full-image logits (see explain)."""
        r = self.keep_ratio if keep_ratio is None else keep_ratio
        if self.mode == "random_mask":
            m = topk_mask(random_mask_logits(xn.shape, xn.device), r)
            return {"logits": None, "soft": None, "mask": m, "explained": None, "full": None}
        logits, explained, out = self.explain(xn, cls)
        soft = torch.sigmoid(logits)
        return {"logits": logits, "soft": soft, "mask": straight_through(topk_mask(logits.detach(), r), soft),
                "explained": explained, "full": out}

    def forward(self, x: torch.Tensor, keep_ratio: float | None = None, cls: torch.Tensor | None = None,
                evalx: int | None = None):
        """{"full", "crop", "drop"} logits and the masks. cls: the class each image's mask should explain
        (class-specific maps; None or -1: the most probable class). evalx (an int, 0 included) is the
        classifier stage of two_stage training instead: logits for the full batch and for its first
        `evalx` images under random masks ("masked")."""
        xn = self.normalize(x)
        if evalx is not None:
            return self._evalx(xn, evalx, self.keep_ratio if keep_ratio is None else keep_ratio)
        if self.mode == "standard" and self.training:  # plain classifier: no mask work at all
            return {"full": self.backbone(xn)}
        mk = self.masks(xn, keep_ratio, cls)
        m = mk["mask"].to(xn.dtype)
        crop, drop = self.crop_drop(xn, m)
        if self.frozen_backbone:
            full_l = mk["full"]
            if full_l is None:
                with torch.no_grad():
                    full_l = self.backbone(xn)
            crop_l, drop_l = self.backbone(torch.cat([crop, drop])).chunk(2)
        elif self.fused_in_training or not self.backbone.training:
            full_l, crop_l, drop_l = self.backbone(torch.cat([xn, crop, drop])).chunk(3)
        else:
            full_l = self.backbone(xn)
            with frozen_bn_stats(self.backbone):
                crop_l, drop_l = self.backbone(crop), self.backbone(drop)
        return {"full": full_l, "crop": crop_l, "drop": drop_l, "mask": m, "soft": mk["soft"],
                "mask_logits": mk["logits"], "explained": mk["explained"]}

    def _evalx(self, xn: torch.Tensor, n: int, keep_ratio: float) -> dict:
        """EVAL-X: the first n images again under a random mask of the given area, even ones kept
        (crop) and odd ones removed (drop), so the classifier learns what a masked image shows. One
        extra pass over n images, not two over the whole batch."""
        if n == 0:
            return {"full": self.backbone(xn)}
        m = topk_mask(random_mask_logits(xn[:n].shape, xn.device), keep_ratio).to(xn.dtype)
        keep = (torch.arange(n, device=xn.device) % 2 == 0).view(-1, 1, 1, 1)
        masked = self.crop_drop(xn[:n], torch.where(keep, m, 1 - m))[0]
        if self.fused_in_training:
            full_l, masked_l = self.backbone(torch.cat([xn, masked])).split([len(xn), n])
        else:
            full_l = self.backbone(xn)
            with frozen_bn_stats(self.backbone):
                masked_l = self.backbone(masked)
        return {"full": full_l, "masked": masked_l}


def build_model(cfg: dict, load_pretrained: bool = True) -> ROIModel:
    """Build from a TrainConfig dict. load_pretrained=False when a checkpoint will overwrite weights."""
    if cfg["mask_net"] not in MASK_NETS:
        raise UserError(f"--mask-net {cfg['mask_net']}: choose from {', '.join(MASK_NETS)}")
    backbone = build_backbone(cfg["backbone"], len(cfg["classes"]),
                              pretrained=cfg["pretrained"] and load_pretrained,
                              weights=cfg["weights"] if load_pretrained else None,
                              drop_path=cfg["drop_path"])
    on_features = cfg["mask_net"].startswith("features")
    per_class = mask_head_of(cfg) == "per_class"
    if per_class and not on_features:
        raise UserError("--mask-head per_class needs --mask-net features, features_fine or features_grad")
    out_channels = len(cfg["classes"]) if per_class else 1
    mask_net = MASK_NETS[cfg["mask_net"]](backbone, out_channels) if on_features else MASK_NETS[cfg["mask_net"]]()
    return ROIModel(backbone, mask_net, cfg["keep_ratio"], cfg["mode"], cfg["passes"],
                    cfg.get("mask_norm", "none"))
