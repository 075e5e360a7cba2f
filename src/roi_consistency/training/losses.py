"""The loss terms, each a pure function of tensors, and the objective of each training stage.

- classifier stage (the method, stage 1): bce(full) + evalx_weight * bce(randomly masked copies);
- mask stage (stage 2, the classifier frozen): alpha * KL(p_full || p_crop) + beta * -log(1 - p_drop)
  over each map's explained finding, + gamma * mean(soft) + delta * TV(soft);
- joint (the reference, `--preset seed`): bce(full) + alpha * |p_full - p_crop| + beta * relu(p_drop - p_full)
  + gamma * mean(soft) + delta * TV(soft).

Probabilities are sigmoids of the logits; every mean is over the batch (and classes or pixels). Each
objective returns (total, {term: detached value}) with the terms named as in TERMS.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TERMS = ("bce", "evalx", "consist", "drop", "sparse", "tv")


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the known labels: a NaN target (a finding the film is not labelled
    for) is left out, not read as negative."""
    known = ~torch.isnan(target)
    mean = F.binary_cross_entropy_with_logits(logits.float(), target.float().nan_to_num(0.0), weight=known.float())
    # the mean over every label, rescaled to the known ones: a factor of exactly 1 where all are known (the
    # plain mean, bit for bit), and no device-to-host sync to find out which case this is
    return mean * (known.numel() / known.sum().clamp(min=1))


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


def _mask_terms(soft: torch.Tensor | None, like: torch.Tensor) -> dict[str, torch.Tensor]:
    zero = like.new_zeros((), dtype=torch.float32)
    return {"sparse": zero, "tv": zero} if soft is None else {"sparse": sparsity(soft), "tv": total_variation(soft)}


def _weighted(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    return (weights["alpha"] * terms["consist"] + weights["beta"] * terms["drop"]
            + weights["gamma"] * terms["sparse"] + weights["delta"] * terms["tv"])


def classifier_loss(full: torch.Tensor, masked: torch.Tensor, target: torch.Tensor, evalx_weight: float):
    """Stage 1: BCE on the full images plus BCE on randomly masked copies of the first len(masked) of them,
    with their own labels (EVAL-X), so a masked image's prediction says what the visible pixels support."""
    terms = {"bce": bce(full, target), "evalx": bce(masked, target[: len(masked)]) if len(masked) else
             full.new_zeros((), dtype=torch.float32)}
    return terms["bce"] + evalx_weight * terms["evalx"], {k: v.detach() for k, v in terms.items()}


def mask_loss(full: torch.Tensor, crop: torch.Tensor, drop: torch.Tensor, soft: torch.Tensor, target: torch.Tensor,
              focus: torch.Tensor, weights: dict[str, float]):
    """Stage 2, against the frozen classifier, per (image, explained finding) where focus [B,C] is 1:
    keeping the region keeps the prediction, KL(p_full || p_crop), and removing it removes the evidence of a
    true finding, -log(1 - p_drop). Cross-entropies rather than probabilities: a finding the mask still
    misses (p_drop near p_full near 1, typically a small lesion) pulls hardest, where |p_full - p_crop|
    and p_drop would pull least (their gradient p(1 - p) fades where the sigmoid saturates)."""
    q = torch.sigmoid(full.float()).detach()
    f = focus.float()
    entropy = -(torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q))  # autocast-safe, unlike F.bce
    consist_el = F.binary_cross_entropy_with_logits(crop.float(), q, reduction="none") - entropy
    drop_el = F.softplus(drop.float())  # -log(1 - sigmoid(drop))
    pos = target.float().nan_to_num(0.0) * f  # an unknown finding is no true finding to remove
    terms = {"consist": (consist_el * f).sum() / f.sum().clamp(min=1.0),
             "drop": (drop_el * pos).sum() / pos.sum().clamp(min=1.0), **_mask_terms(soft, full)}
    return _weighted(terms, weights), {k: v.detach() for k, v in terms.items()}


def joint_loss(full: torch.Tensor, crop: torch.Tensor | None, drop: torch.Tensor | None, soft: torch.Tensor | None,
               target: torch.Tensor, weights: dict[str, float]):
    """The reference: every term from the first step. crop/drop None: a plain classifier (mode standard)."""
    zero = full.new_zeros((), dtype=torch.float32)
    terms = {"bce": bce(full, target), "consist": zero, "drop": zero, **_mask_terms(soft, full)}
    if crop is not None:
        p_full, p_crop, p_drop = (torch.sigmoid(t.float()) for t in (full, crop, drop))
        terms["consist"], terms["drop"] = consistency(p_full, p_crop), drop_penalty(p_full, p_drop)
    return terms["bce"] + _weighted(terms, weights), {k: v.detach() for k, v in terms.items()}
