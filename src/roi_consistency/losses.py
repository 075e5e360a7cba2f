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
    """Stage 1 of two_stage: BCE on the full image plus BCE on randomly masked copies of some images
    with their own labels (EVAL-X), so a masked image's prediction says what the visible pixels
    support. The masked BCE is logged in the "consist" column."""
    zero = out["full"].new_zeros((), dtype=torch.float32)
    terms = {"bce": bce(out["full"], target), "consist": zero, "drop": zero, "sparse": zero, "tv": zero}
    if "masked" in out:
        terms["consist"] = bce(out["masked"], target[: len(out["masked"])])
    total = terms["bce"] + evalx_weight * terms["consist"]
    return total, {k: v.detach() for k, v in terms.items()}


def mask_stage_loss(out: dict[str, torch.Tensor], target: torch.Tensor, weights: dict[str, float],
                    focus: torch.Tensor | None = None, space: str = "prob"):
    """Stage 2 of two_stage, against the frozen classifier: keeping the region keeps the predictions
    (alpha * |p_full - p_crop|), and removing it removes the evidence of the true findings
    (beta * mean p_drop over true findings, rather than relu(p_drop - p_full), which is already
    satisfied when p_drop <= p_full). focus [B,C] (0/1) limits both terms to the class each mask
    explains (per-class head); None means every class.

    space="bce" measures both terms as cross-entropies instead: KL(p_full || p_crop) and -log(1 - p_drop).
    Their gradients do not fade where a sigmoid saturates, so a finding the mask still misses (p_drop
    near p_full near 1, typically a small lesion) pulls hardest, where in probability space it pulls least.

    space="odds" keeps that consistency term and scores removal relative to the full image:
    log(1 + odds(p_drop) / odds(p_full)), i.e. softplus(logit_drop - logit_full). A missed finding pulls
    with the same strength whatever the classifier's confidence in it, so a faint lesion (p_full 0.3)
    counts as much as an obvious one (p_full 0.99), where -log(1 - p_drop) pulls in proportion to p_drop."""
    p_full, p_crop, p_drop = (torch.sigmoid(out[k].float()) for k in ("full", "crop", "drop"))
    f = torch.ones_like(p_full) if focus is None else focus.float()
    pos = target.float() * f
    q = p_full.detach()
    if space in ("bce", "odds"):  # per (image, class): KL(p_full || p_crop), then the removal term
        entropy = -(torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q))  # autocast-safe, unlike F.bce
        consist_el = F.binary_cross_entropy_with_logits(out["crop"].float(), q, reduction="none") - entropy
        z_drop = out["drop"].float() - (out["full"].float().detach() if space == "odds" else 0.0)
        drop_el = F.softplus(z_drop)  # -log(1 - sigmoid(z_drop))
    else:  # |p_full - p_crop| and p_drop
        consist_el, drop_el = (q - p_crop).abs(), p_drop
    consist = (consist_el * f).sum() / f.sum().clamp(min=1.0)
    drop_pos = (drop_el * pos).sum() / pos.sum().clamp(min=1.0)
    zero = p_full.new_zeros(())
    terms = {"bce": bce(out["full"], target).detach(), "consist": consist,
             "drop": drop_pos, "sparse": sparsity(out["soft"]) if out.get("soft") is not None else zero,
             "tv": total_variation(out["soft"]) if out.get("soft") is not None else zero}
    total = (weights["alpha"] * terms["consist"] + weights["beta"] * terms["drop"]
             + weights["gamma"] * terms["sparse"] + weights["delta"] * terms["tv"])
    return total, {k: v.detach() for k, v in terms.items()}
