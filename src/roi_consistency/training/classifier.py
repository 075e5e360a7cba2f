"""Stage 1 of the method: the classifier, trained on full images and on randomly masked copies of some
of them with their labels kept (EVAL-X, Jethani et al. 2021), so that it learns what a masked image
shows. Without it a classifier reacts to any hole, and removing a random region would look as
"faithful" as removing the evidence (EXPERIMENTS.md, round 1).

An `evalx_weight` share (a quarter) of each batch is shown again under a random mask of a random area (log-uniform
from `evalx_min_keep` to 60% kept): even images keep the region, odd ones lose it.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from tqdm import tqdm

from roi_consistency.data.dataset import to_input
from roi_consistency.model.masks import random_maps, topk_mask
from roi_consistency.model.network import ROIModel
from roi_consistency.training.loop import Validation, log_uniform, run_epoch
from roi_consistency.training.losses import classifier_loss

# the validation figure whose best epoch is kept (*.best.pt), and whether higher is better
BEST = ("val_mean_auroc", True)
MAX_KEEP = 0.6  # the largest share a random region keeps


def evalx_logits(model: ROIModel, xn: torch.Tensor, n: int, keep_ratio: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the full batch, and of its first n images again under random masks of the given area."""
    if n == 0:
        full = model.backbone(xn)
        return full, full[:0]
    m = topk_mask(random_maps(xn[:n].shape, xn.device, generator), keep_ratio).to(xn.dtype)
    keep = (torch.arange(n, device=xn.device) % 2 == 0).view(-1, 1, 1, 1)
    masked = model.crop_drop(xn[:n], torch.where(keep, m, 1 - m))[0]
    full, masked_l = model.logits(xn, masked)
    return full, masked_l


class Forward(nn.Module):
    """The stage's training forward, the module DDP wraps: only the backbone has trainable parameters."""

    def __init__(self, model: ROIModel, cfg=None):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, n: int, keep_ratio: float):
        return evalx_logits(self.model, self.model.normalize(x), n, keep_ratio)


def param_groups(model: ROIModel, cfg) -> list[dict]:
    """The classifier learns; the mask network never runs in this stage."""
    model.backbone.requires_grad_(True)
    model.mask_net.requires_grad_(False)
    return [{"params": list(model.backbone.parameters()), "lr": cfg.optim.lr}]


def n_masked(cfg, batch: int) -> int:
    return min(batch, math.ceil(cfg.method.evalx_weight * batch))


def train_one_epoch(net, optimizer, scheduler, loader, pos, loop, cfg, size: int, n_batches: int,
                    desc: str) -> dict:
    device, method = loop.rt.device, cfg.method

    def step_loss(x, y):
        y = y.to(device, non_blocking=True)
        r = log_uniform(method.evalx_min_keep, MAX_KEEP)
        full, masked = net(to_input(x, device, size), n_masked(cfg, len(y)), r)
        return classifier_loss(full, masked, y, method.evalx_weight)

    net.train()
    return run_epoch(net, step_loss, optimizer, scheduler, loader, pos, loop, n_batches, desc)


@torch.no_grad()
def validate(model: ROIModel, loader, rt, cfg) -> dict:
    """The stage's own objective on the validation set, with random masks drawn from a fixed seed so
    epochs compare, and the full image's AUROC."""
    model.eval()
    gen, val = torch.Generator().manual_seed(0), Validation()
    for x, y, i in tqdm(loader, desc="validate", unit="batch", disable=not rt.main, leave=False):
        xn = model.normalize(to_input(x, rt.device, cfg.model.img_size))
        r = log_uniform(cfg.method.evalx_min_keep, MAX_KEEP, gen)
        with rt.autocast():
            full, masked = evalx_logits(model, xn, n_masked(cfg, len(y)), r, gen)
            loss, terms = classifier_loss(full, masked, y.to(rt.device), cfg.method.evalx_weight)
        val.images(full, y, i)
        val.terms(len(y), {"loss": loss, **terms})
    return val.metrics(rt, cfg.data.classes, cfg.method.threshold_rule)
