"""ROAD's noisy linear imputation (Rong et al., ICML 2022), batched on the device.

A removal score can come from the fill itself (the classifier saw the model's fill in training) or from
the shape of the removed region. ROAD fills each removed pixel with the weighted mean of its eight
neighbours (edges 1/6, corners 1/12), known or themselves imputed, plus a little noise: a linear
system per image. pytorch-grad-cam solves it per image with a sparse direct solver on the CPU; here it
is solved for the whole batch at once by conjugate gradients, the operator being one 3x3 stencil.
The system is symmetric positive definite wherever every removed blob touches a kept pixel (a
topk_mask always keeps one). A coarse-to-fine start (the same system on 2x coarser grids, solved
first) leaves only fine detail for the iterations, so a few dozen suffice at any removed fraction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHECK = 4  # iterations between two convergence checks (each a host sync)
NOISE = 0.01  # the noise of ROAD's imputer, in [0, 1] pixel units


def _neighbours(u: torch.Tensor) -> torch.Tensor:
    """Each pixel's weighted sum of its in-image neighbours, [N,1,H,W]: the kernel [[1,2,1],[2,0,2],[1,2,1]]/12
    is the separable [1,2,1] x [1,2,1] less 4x the centre; shifted slices beat a one-channel conv 5x."""
    p = F.pad(u, (1, 1, 1, 1))
    v = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]
    return (v[..., :-2] + 2 * v[..., 1:-1] + v[..., 2:] - 4 * u) / 12


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image dot products of [N,1,H,W] tensors, as [N,1,1,1]."""
    return (a * b).sum((1, 2, 3), keepdim=True)


def _solve(x: torch.Tensor, known: torch.Tensor, start: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Conjugate gradients on the removed pixels: s*u - K*(u on removed) = K*(x on kept), where s is the
    sum of in-image neighbour weights. x, known, start: [N,1,H,W]; returns the image with u filled in.
    The iterates stay zero on kept pixels, so the operator needs no mask on its input."""
    miss = 1.0 - known
    miss_s = miss * _neighbours(torch.ones_like(x[:1]))

    def op(v):
        return miss_s * v - miss * _neighbours(v)
    b = miss * _neighbours(x * known)
    u = start * miss
    r = b - op(u)
    p, rs = r.clone(), _dot(r, r)
    stop = tol ** 2 * _dot(b, b)
    for i in range(max_iter):
        if i % CHECK == 0 and bool((rs <= stop).all()):
            break
        ap = op(p)
        alpha = rs / _dot(p, ap).clamp_min(1e-30)
        u.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1.0)
        rs_new = _dot(r, r)
        p.mul_(rs_new / rs.clamp_min(1e-30)).add_(r)
        rs = rs_new
    return x * known + u * miss


def _linear_fill(x: torch.Tensor, known: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """The noiseless imputation, coarse to fine: the 2x coarser problem (a coarse pixel is known where
    any of its four is, with their mean) is solved first, and upsampled as the start."""
    h, w = x.shape[-2:]
    if min(h, w) <= 8 or bool(known.all()):
        start = torch.zeros_like(x)
    else:
        cnt = F.avg_pool2d(known, 2, ceil_mode=True)
        coarse = F.avg_pool2d(x * known, 2, ceil_mode=True) / cnt.clamp_min(1e-12)
        sub = _linear_fill(coarse, (cnt > 0).to(x), tol, max_iter)
        start = F.interpolate(sub, size=(h, w), mode="bilinear", align_corners=False)
    return _solve(x, known, start, tol, max_iter)


@torch.no_grad()
def impute(x: torch.Tensor, keep: torch.Tensor, noise: float = NOISE, generator: torch.Generator | None = None,
           tol: float = 1e-3, max_iter: int = 200) -> torch.Tensor:
    """x [B,C,H,W] with the pixels where keep [B,1,H,W] is 0 replaced by ROAD's noisy linear imputation
    (each channel on its own; the noise is the same in every channel, so a gray image stays gray).
    tol: the relative residual at which the iterations stop."""
    b, c, h, w = x.shape
    known = (keep > 0.5).to(torch.float32).expand(b, c, h, w).reshape(b * c, 1, h, w)
    filled = _linear_fill(x.float().reshape(b * c, 1, h, w), known, tol, max_iter).reshape(b, c, h, w)
    z = torch.randn((b, 1, h, w), generator=generator).to(x.device) if noise else 0.0
    return (filled + noise * z * (1.0 - known.reshape(b, c, h, w))).to(x.dtype)
