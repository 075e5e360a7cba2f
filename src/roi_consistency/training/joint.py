"""The reference pipeline (`--preset seed`): one stage that trains the classifier and the tiny mask net
jointly, every term from the first step,

    loss = bce(full) + alpha*|p_full - p_crop| + beta*relu(p_drop - p_full) + gamma*mean(soft) + delta*TV(soft)

with the ImageNet-mean fill and alpha, beta, gamma, delta = 1, 0.5, 1e-3, 1e-4. It is kept as the row
the method is measured against (EXPERIMENTS.md, row 1), with its ablations and controls (`--mode`):
standard (a plain classifier: bce alone), random_mask (a random region instead of the learned one),
no_consist, no_drop, no_sparse and no_tv (that term's weight set to 0).
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from roi_consistency.data.dataset import to_input
from roi_consistency.model.masks import binary_mask, random_maps, topk_mask
from roi_consistency.model.network import ROIModel
from roi_consistency.training.loop import Validation, run_epoch
from roi_consistency.training.losses import joint_loss

# the validation figure whose best epoch is kept (*.best.pt), and whether higher is better
BEST = ("val_mean_auroc", True)


def joint_outputs(model: ROIModel, xn: torch.Tensor, mode: str):
    """(full, crop, drop logits, soft mask, binary mask); for the plain classifier in training, only
    full (the rest None)."""
    if mode == "standard" and model.training:
        return model.backbone(xn), None, None, None, None
    if mode == "random_mask":
        m, soft = topk_mask(random_maps(xn.shape, xn.device), model.keep_ratio), None
    else:
        m, soft = binary_mask(model.explain(xn).maps, model.keep_ratio)
    crop, drop = model.crop_drop(xn, m.to(xn.dtype))
    full, crop_l, drop_l = model.logits(xn, crop, drop)
    return full, crop_l, drop_l, soft, m


class Forward(nn.Module):
    """The stage's training forward, the module DDP wraps."""

    def __init__(self, model: ROIModel, cfg):
        super().__init__()
        self.model, self.mode = model, cfg.method.mode

    def forward(self, x: torch.Tensor):
        return joint_outputs(self.model, self.model.normalize(x), self.mode)


def param_groups(model: ROIModel, cfg) -> list[dict]:
    """The classifier, and the mask network where it learns (not for the two controls, nor when every
    mask term has weight 0: DDP must not wait for parameters that get no gradient)."""
    learns = cfg.method.mode not in ("standard", "random_mask") and any(cfg.method.loss_weights().values())
    model.backbone.requires_grad_(True)
    model.mask_net.requires_grad_(learns)
    groups = [{"params": list(model.backbone.parameters()), "lr": cfg.optim.lr}]
    if learns:
        groups.append({"params": list(model.mask_net.parameters()), "lr": cfg.optim.mask_lr or cfg.optim.lr})
    return groups


def train_one_epoch(net, optimizer, scheduler, loader, pos, loop, cfg, size: int, n_batches: int,
                    desc: str) -> dict:
    device, weights = loop.rt.device, cfg.method.loss_weights()

    def step_loss(x, y):
        y = y.to(device, non_blocking=True)
        full, crop, drop, soft, _ = net(to_input(x, device, size))
        return joint_loss(full, crop, drop, soft, y, weights)

    net.train()
    return run_epoch(net, step_loss, optimizer, scheduler, loader, pos, loop, n_batches, desc)


@torch.no_grad()
def validate(model: ROIModel, loader, rt, cfg) -> dict:
    """The joint objective on the validation set, the kept fraction, and the full image's AUROC."""
    model.eval()
    weights, val = cfg.method.loss_weights(), Validation()
    for x, y, i in tqdm(loader, desc="validate", unit="batch", disable=not rt.main, leave=False):
        xn = model.normalize(to_input(x, rt.device, cfg.model.img_size))
        with rt.autocast():
            full, crop, drop, soft, m = joint_outputs(model, xn, cfg.method.mode)
            loss, terms = joint_loss(full, crop, drop, soft, y.to(rt.device), weights)
        val.images(full, y, i)
        val.terms(len(y), {"loss": loss, "kept": m.mean(), **terms})
    return val.metrics(rt, cfg.data.classes, cfg.method.threshold_rule)
