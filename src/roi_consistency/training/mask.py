"""Stage 2 of the method: the mask network, trained against the frozen classifier of stage 1, so that
keeping the top of its map keeps the prediction and removing it removes the evidence.

Each map explains one finding, so the stage trains on (image, true finding) pairs: an image with two
findings trains two maps, an image without findings has nothing to explain and sits out. Each batch
draws its keep ratio log-uniformly from [min_keep_ratio, keep_ratio], so the map's top pixels, not just
its top share, hold the evidence. The classifier's weights get no gradients (about a third of its
backward pass saved); only the input pixels of the crop and drop images do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from roi_consistency.data.dataset import to_input
from roi_consistency.model.masks import binary_mask
from roi_consistency.model.network import ROIModel
from roi_consistency.training.loop import Validation, log_uniform, run_epoch
from roi_consistency.training.losses import mask_loss

# the best epoch is the one with the lowest objective: the classifier, and its AUROC, are frozen here
BEST = ("val_loss", False)
PAIRS_PER_IMAGE = 2  # a micro-batch trains at most this many pairs per image: memory stays bounded on NIH


def class_pairs(y: torch.Tensor, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, classes): one pair per true finding of every image. An image without findings is left
    out, unless no image in the batch has one: then every image is paired with class -1 (its most
    probable class), so each step still trains (and DDP ranks stay in step). With more than `limit`
    pairs a random `limit` of them are kept."""
    rows, cls = (y > 0.5).nonzero(as_tuple=True)
    if not len(rows):
        return torch.arange(len(y)), torch.full((len(y),), -1, dtype=torch.long)
    if limit is not None and len(rows) > limit:
        keep = torch.randperm(len(rows))[:limit].sort().values
        rows, cls = rows[keep], cls[keep]
    return rows, cls


def mask_outputs(model: ROIModel, xn: torch.Tensor, keep_ratio: float, cls: torch.Tensor | None):
    """(full, crop, drop logits, soft mask, binary mask, explained class) of the frozen classifier, for
    the map each image of xn draws for its class in cls."""
    e = model.explain(xn, cls)
    m, soft = binary_mask(e.maps, keep_ratio)
    crop, drop = model.crop_drop(xn, m.to(xn.dtype))
    crop_l, drop_l = model.backbone(torch.cat([crop, drop])).chunk(2)
    return e.full, crop_l, drop_l, soft, m, e.cls


class Forward(nn.Module):
    """The stage's training forward, the module DDP wraps: only the mask network has trainable parameters."""

    def __init__(self, model: ROIModel, cfg=None):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, keep_ratio: float, cls: torch.Tensor):
        return mask_outputs(self.model, self.model.normalize(x), keep_ratio, cls)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.backbone.eval()  # frozen classifier: no BatchNorm statistics updates, no dropout
        return self


def param_groups(model: ROIModel, cfg) -> list[dict]:
    """The mask network learns; the classifier is frozen (no weight gradients, running statistics fixed)."""
    model.backbone.requires_grad_(False)
    model.mask_net.requires_grad_(True)
    return [{"params": list(model.mask_net.parameters()), "lr": cfg.optim.mask_lr or cfg.optim.lr}]


def _pair_loss(out, y: torch.Tensor, weights: dict):
    full, crop, drop, soft, _, explained = out
    return mask_loss(full, crop, drop, soft, y, F.one_hot(explained, y.shape[1]), weights)


def train_one_epoch(net, optimizer, scheduler, loader, pos, loop, cfg, size: int, n_batches: int,
                    desc: str) -> dict:
    device, method, weights = loop.rt.device, cfg.method, cfg.method.loss_weights()

    def step_loss(x, y):
        r = log_uniform(method.min_keep_ratio, method.keep_ratio)
        rows, cls = (t.to(device) for t in class_pairs(y, limit=PAIRS_PER_IMAGE * len(y)))
        x, y = to_input(x, device, size)[rows], y.to(device, non_blocking=True)[rows]
        return _pair_loss(net(x, r, cls), y, weights)

    net.train()
    return run_epoch(net, step_loss, optimizer, scheduler, loader, pos, loop, n_batches, desc)


@torch.no_grad()
def validate(model: ROIModel, loader, rt, cfg) -> dict:
    """The stage's own objective on every (image, true finding) pair of the validation set, at the model's
    keep ratio, the kept fraction, and the full image's AUROC (the classifier's: frozen here)."""
    model.eval()
    weights, r, val = cfg.method.loss_weights(), cfg.method.keep_ratio, Validation()
    for x, y, i in tqdm(loader, desc="validate", unit="batch", disable=not rt.main, leave=False):
        xn, yd = model.normalize(to_input(x, rt.device, cfg.model.img_size)), y.to(rt.device)
        with rt.autocast():
            val.images(model.backbone(xn), y, i)
            rows, cls = (t.to(rt.device) for t in class_pairs(y))
            for part in torch.arange(len(rows), device=rt.device).split(len(y)):  # memory as in training
                out = mask_outputs(model, xn[rows[part]], r, cls[part])
                loss, terms = _pair_loss(out, yd[rows[part]], weights)
                val.terms(len(part), {"loss": loss, "kept": out[4].mean(), **terms})
    return val.metrics(rt, cfg.data.classes, cfg.method.threshold_rule)
