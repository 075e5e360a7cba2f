"""The five loss terms, each a pure function of tensors, and their weighted sum:

    loss = bce(full) + alpha*|p_full - p_crop| + beta*relu(p_drop - p_full) + gamma*mean(soft) + delta*TV(soft)

Probabilities are sigmoids of the logits; every mean is over the batch (and classes or pixels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def consistency(p_full: torch.Tensor, p_crop: torch.Tensor) -> torch.Tensor:
    """Keeping only the masked region should not change the prediction."""
    return (p_full - p_crop).abs().mean()


def drop_penalty(p_full: torch.Tensor, p_drop: torch.Tensor) -> torch.Tensor:
    """Removing the region should not raise confidence."""
    return F.relu(p_drop - p_full).mean()


def sparsity(soft: torch.Tensor) -> torch.Tensor:
    return soft.mean()


def total_variation(soft: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontal and vertical neighbours: favours compact regions."""
    return (soft[..., :, 1:] - soft[..., :, :-1]).abs().mean() + (soft[..., 1:, :] - soft[..., :-1, :]).abs().mean()


TERMS = ("bce", "consist", "drop", "sparse", "tv")


def roi_loss(out: dict[str, torch.Tensor], target: torch.Tensor, weights: dict[str, float]):
    """Weighted total and the unweighted terms (detached, for logging) from a model output dict."""
    zero = out["full"].new_zeros((), dtype=torch.float32)
    terms = {"bce": bce(out["full"], target)}
    if "crop" in out:
        p_full, p_crop, p_drop = (torch.sigmoid(out[k].float()) for k in ("full", "crop", "drop"))
        terms["consist"] = consistency(p_full, p_crop)
        terms["drop"] = drop_penalty(p_full, p_drop)
    soft = out.get("soft")
    terms["sparse"] = sparsity(soft) if soft is not None else zero
    terms["tv"] = total_variation(soft) if soft is not None else zero
    for k in TERMS:
        terms.setdefault(k, zero)
    total = (terms["bce"] + weights["alpha"] * terms["consist"] + weights["beta"] * terms["drop"]
             + weights["gamma"] * terms["sparse"] + weights["delta"] * terms["tv"])
    return total, {k: v.detach() for k, v in terms.items()}
