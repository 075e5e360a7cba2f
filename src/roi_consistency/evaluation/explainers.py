"""Explainers: every map `evaluate` scores comes from an object with one call,

    maps = explainer(pairs)     # [P,1,H,W], higher = more relevant, one map per (image, class) pair

so the metric passes (crop and drop at each keep ratio, pointing, IoBB, kept fraction, leakage, examples)
treat them all alike, and one more map is one more small class here.

- Learned: the model's own mask network (for the method's head, the map drawn for the pair's class);
- GradCAM: Grad-CAM (pytorch-grad-cam) on the backbone's last stage, for the pair's class;
- Random: smooth random blobs, seeded: the control a faithful map must beat;
- BoxOracle (not among evaluate's defaults): the ground-truth boxes of the pair's finding, the oracle a
  map can at best match;
- Edges (only in the randomisation check): the image's gradient magnitude, a map that ignores the model;
- the controls that show what the learned head adds (`evaluate --maps`): Attribution, the gradient x
  (input - fill) the head reads; Anomaly, a model-free |input - fill|, smoothed (if it scores like the
  learned map, the head finds anomalies, not the model's evidence); GradCAM at the stride-16 stage.

EXPLAINERS builds any of them by name, all with one signature: EXPLAINERS[name](model, cfg, seed).

An explainer whose maps have plateaus (Grad-CAM's ReLU makes many zeros) sets `ties = True`: the passes
then break ties for top-r with a tiny seeded jitter, never by pixel index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from roi_consistency.errors import UserError
from roi_consistency.evaluation.metrics import box_mask
from roi_consistency.evaluation.schema import DEFAULT_MAPS
from roi_consistency.model.mask_nets import class_attribution, feature_layers
from roi_consistency.model.masks import random_maps
from roi_consistency.model.network import ROIModel


@dataclass
class Pairs:
    """(image, class) pairs to explain: normalised images [P,3,H,W], classes [P], and for each pair the
    boxes of its finding on its image, in model-input pixels (x, y, w, h), where known."""
    xn: torch.Tensor
    cls: torch.Tensor
    boxes: list[list[tuple[float, float, float, float]]]

    def __len__(self) -> int:
        return len(self.cls)


class Learned:
    name, ties = "learned", False

    def __init__(self, model: ROIModel):
        self.model = model

    def __call__(self, pairs: Pairs) -> torch.Tensor:
        with torch.no_grad():  # the head takes its input gradient itself
            return self.model.explain(pairs.xn, pairs.cls).maps


def gradcam_layer(backbone: torch.nn.Module, stride16: bool = False) -> torch.nn.Module:
    """The last convolutional stage, where Grad-CAM is usually taken, or the stage of stride 16."""
    if stride16:
        try:
            return backbone.get_submodule(feature_layers(backbone)[2])
        except UserError:
            raise UserError("--maps gradcam16: Grad-CAM at stride 16 reads a ResNet's layer3 or a ConvNeXt's "
                            "features.5; this backbone has neither") from None
    if hasattr(backbone, "layer4"):
        return backbone.layer4[-1]
    if hasattr(backbone, "features"):
        return backbone.features[-1] if isinstance(backbone.features, torch.nn.Sequential) else backbone.features
    raise UserError("Grad-CAM: this backbone has no layer4/features stage; pick a CNN backbone")


def gradcam_maps(backbone: torch.nn.Module, xn: torch.Tensor, classes: list[int],
                 stride16: bool = False) -> torch.Tensor:
    """Grad-CAM maps [P,1,H,W] for pairs (xn[p], classes[p]), at the input's size. The hooks live only
    for this call, so the many other backbone calls of an evaluation stay unhooked."""
    from pytorch_grad_cam import GradCAM  # imported here: it pulls in OpenCV, which only evaluation needs
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    with torch.enable_grad(), GradCAM(model=backbone, target_layers=[gradcam_layer(backbone, stride16)]) as cam:
        g = cam(input_tensor=xn, targets=[ClassifierOutputTarget(c) for c in classes])
    return torch.from_numpy(np.asarray(g, dtype=np.float32)).unsqueeze(1).to(xn.device)


class GradCAM:
    ties = True

    def __init__(self, model: ROIModel, stride16: bool = False):
        self.backbone, self.stride16 = model.backbone, stride16
        self.name = "gradcam16" if stride16 else "gradcam"
        gradcam_layer(self.backbone, stride16)  # fail early for a backbone Grad-CAM cannot use

    def __call__(self, pairs: Pairs) -> torch.Tensor:
        return gradcam_maps(self.backbone, pairs.xn, pairs.cls.tolist(), self.stride16)


class Attribution:
    """Gradient x (input - fill) of the pair's logit, summed over channels: the first-order drop of the logit
    when each pixel is removed, the attribution the method's mask head reads."""
    name, ties = "attribution", False

    def __init__(self, model: ROIModel):
        self.model = model

    def __call__(self, pairs: Pairs) -> torch.Tensor:
        return class_attribution(self.model.backbone, pairs.xn, (), pairs.cls, self.model.fill_for(pairs.xn))[3]


class Anomaly:
    """|input - fill|, averaged over an 8-px window at 224 px (scaled): whatever departs from the mean normal
    film, a map that never asks the model."""
    name, ties = "anomaly", False

    def __init__(self, model: ROIModel):
        self.fill_for = model.fill_for

    def __call__(self, pairs: Pairs) -> torch.Tensor:
        diff = (pairs.xn - self.fill_for(pairs.xn)).abs().mean(1, keepdim=True).float()
        k = max(3, round(8 * pairs.xn.shape[-1] / 224) // 2 * 2 + 1)
        return F.avg_pool2d(diff, k, stride=1, padding=k // 2, count_include_pad=False)


class Random:
    ties = False

    def __init__(self, seed: int = 0, name: str = "random"):
        self.gen, self.name = torch.Generator().manual_seed(seed), name

    def __call__(self, pairs: Pairs) -> torch.Tensor:
        return random_maps(pairs.xn.shape, pairs.xn.device, self.gen)


class Edges:
    """The image's Sobel gradient magnitude: a map that never looks at the model, the control the
    randomisation check (sanity.py) must fail."""
    name, ties = "edges", False

    def __init__(self, model: ROIModel):
        self.to_gray = model.to_gray

    def __call__(self, pairs: Pairs) -> torch.Tensor:
        g = self.to_gray(pairs.xn)[:, None]
        k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=g.device)
        gx = torch.nn.functional.conv2d(g, k.view(1, 1, 3, 3), padding=1)
        gy = torch.nn.functional.conv2d(g, k.t().contiguous().view(1, 1, 3, 3), padding=1)
        return (gx ** 2 + gy ** 2).sqrt()


class BoxOracle:
    """1 inside the pair's boxes, 0 outside: what a map that found the lesion exactly would draw."""
    name, ties = "boxes", True

    def __call__(self, pairs: Pairs) -> torch.Tensor:
        h, w = pairs.xn.shape[-2:]
        masks = [np.any([box_mask((h, w), b) for b in bxs] or [np.zeros((h, w), bool)], axis=0)
                 for bxs in pairs.boxes]
        return torch.from_numpy(np.stack(masks)).float()[:, None].to(pairs.xn.device)


def learned(model: ROIModel, cfg, seed: int):
    """The model's own map (a random_mask control model's "learned" map is random)."""
    return Random(seed + 1, name="learned") if cfg.method.mode == "random_mask" else Learned(model)


EXPLAINERS = {"learned": learned, "gradcam": lambda model, cfg, seed: GradCAM(model),
              "random": lambda model, cfg, seed: Random(seed),
              "attribution": lambda model, cfg, seed: Attribution(model),
              "anomaly": lambda model, cfg, seed: Anomaly(model),
              "gradcam16": lambda model, cfg, seed: GradCAM(model, stride16=True)}


def build_explainers(names, model: ROIModel, cfg, seed: int = 0) -> list:
    """The named explainers on the same model, the learned map first (evaluate's other passes read it first)."""
    unknown = [n for n in names if n not in EXPLAINERS]
    if unknown:
        raise UserError(f"--maps {','.join(names)}: unknown {', '.join(unknown)}; choose from {', '.join(EXPLAINERS)}")
    ordered = ["learned"] + [n for n in dict.fromkeys(names) if n != "learned"]
    return [EXPLAINERS[n](model, cfg, seed) for n in ordered]


def default_explainers(model: ROIModel, cfg, seed: int = 0) -> list:
    """The learned map, Grad-CAM and the random control, on the same model."""
    return build_explainers(DEFAULT_MAPS, model, cfg, seed)
