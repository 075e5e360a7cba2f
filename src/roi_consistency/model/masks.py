"""From maps to masks. A map scores every pixel (higher: more relevant); a mask is binary and keeps
exactly k = round(keep_ratio * H * W) pixels per image, the map's top k.

We rank the map and scatter ones at the top-k indices: a threshold at the k-th value would keep every
tied pixel, and a saturated sigmoid ties many. A straight-through estimator (`hard + (soft -
soft.detach())`) lets the crop and drop losses reach the mask network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_mask(maps: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Binary mask [B,1,H,W] with exactly round(keep_ratio*H*W) ones per image (at least one)."""
    b, _, h, w = maps.shape
    k = max(1, round(keep_ratio * h * w))
    idx = maps.reshape(b, -1).float().topk(k, dim=1).indices
    hard = torch.zeros(b, h * w, device=maps.device, dtype=torch.float32)
    return hard.scatter_(1, idx, 1.0).reshape(b, 1, h, w)


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Forward value exactly `hard` (soft - soft.detach() is exactly zero), gradient of `soft`."""
    return hard + (soft - soft.detach())


def binary_mask(maps: torch.Tensor, keep_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the top-k mask with the sigmoid's straight-through gradient, the sigmoid itself)."""
    soft = torch.sigmoid(maps)
    return straight_through(topk_mask(maps.detach(), keep_ratio), soft), soft


def random_maps(shape: tuple[int, ...], device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Smooth random maps: noise at 1/8 resolution, upsampled, so a random top-k mask is a few blobs of
    the same area as a learned region rather than scattered single pixels."""
    b, _, h, w = shape
    low = torch.rand(b, 1, max(1, h // 8), max(1, w // 8), generator=generator)
    return F.interpolate(low.to(device), size=(h, w), mode="bilinear", align_corners=False)
