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


def classifier_stage_loss(out: dict[str, torch.Tensor], target: torch.Tensor, evalx_weight: float):
    """Stage 1 of two_stage: BCE on the full image plus BCE on the random-mask crop and drop with the
    image's own labels (EVAL-X), so a masked image's prediction says what the visible pixels support."""
    zero = out["full"].new_zeros((), dtype=torch.float32)
    terms = {"bce": bce(out["full"], target), "consist": bce(out["crop"], target), "drop": bce(out["drop"], target),
             "sparse": zero, "tv": zero}
    total = terms["bce"] + evalx_weight * 0.5 * (terms["consist"] + terms["drop"])
    if out.get("soft") is not None:  # keep the mask net in the graph (zero gradient) for DDP
        total = total + 0.0 * out["soft"].sum()
    return total, {k: v.detach() for k, v in terms.items()}


def mask_stage_loss(out: dict[str, torch.Tensor], target: torch.Tensor, weights: dict[str, float]):
    """Stage 2 of two_stage, against the frozen classifier: keeping the region keeps every prediction
    (alpha * |p_full - p_crop|), and removing it removes the evidence of the true findings
    (beta * mean p_drop over true findings, rather than relu(p_drop - p_full), which is already
    satisfied when p_drop <= p_full)."""
    p_full, p_crop, p_drop = (torch.sigmoid(out[k].float()) for k in ("full", "crop", "drop"))
    pos = target.float()
    drop_pos = (p_drop * pos).sum() / pos.sum().clamp(min=1.0)
    zero = p_full.new_zeros(())
    terms = {"bce": bce(out["full"], target).detach(), "consist": consistency(p_full.detach(), p_crop),
             "drop": drop_pos, "sparse": sparsity(out["soft"]) if out.get("soft") is not None else zero,
             "tv": total_variation(out["soft"]) if out.get("soft") is not None else zero}
    total = (weights["alpha"] * terms["consist"] + weights["beta"] * terms["drop"]
             + weights["gamma"] * terms["sparse"] + weights["delta"] * terms["tv"])
    return total, {k: v.detach() for k, v in terms.items()}
