"""Classifiers: any torchvision classification model by name, its head swapped for our classes, started
from ImageNet weights, from scratch, or from a local state dict (`--weights`)."""
from __future__ import annotations

import torch
from torch import nn

from roi_consistency.errors import UserError


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


def build_backbone(name: str, num_classes: int, download: bool = False, weights: dict | None = None,
                   weights_name: str = "--weights", drop_path: float = 0.0) -> nn.Module:
    """Any torchvision classification model by name, with a num_classes head: from a state dict already
    read (`weights`, its tensors that fit), else with ImageNet's weights where `download`, else fresh."""
    import torchvision
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(f"--backbone {name}: not a torchvision classification model; e.g. resnet18, "
                        "resnet50, densenet121, convnext_tiny, convnext_base, efficientnet_b0")
    kwargs = {}
    if name.startswith(("convnext", "swin", "efficientnet", "maxvit")):
        kwargs["stochastic_depth_prob"] = drop_path  # also overrides torchvision's heavy built-in default
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if download and weights is None:
        w = torchvision.models.get_model_weights(name).DEFAULT
        try:
            model.load_state_dict(w.get_state_dict(progress=True, check_hash=True))
        except Exception as exc:  # URLError, HTTPError, hash mismatch: all mean "no weights"
            raise UserError(f"could not fetch the ImageNet weights {w} for {name} ({exc}). "
                            "Pass --weights PATH to a local state dict, or --no-pretrained to start "
                            "from scratch.") from None
    _replace_head(model, num_classes)
    if weights is not None:
        load_matching(model, weights, weights_name)
    return model


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load the tensors of a state dict whose name and shape match (a 1000-class ImageNet head is
    skipped). Refuse one that matches almost nothing: another architecture."""
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape}
    if len(keep) < 0.9 * (len(own) - 2):
        raise UserError(f"{what}: only {len(keep)} of {len(own)} tensors match this backbone; "
                        "is it a state dict for the same --backbone?")
    model.load_state_dict(keep, strict=False)
