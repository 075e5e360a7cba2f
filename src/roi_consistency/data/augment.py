"""Augmentation: mild, a small random-resized crop and a rotation of a few degrees, and no horizontal
flip (laterality matters in chest films). Its random parameters come from a seed that the sampler hands
over with each index (dataset.SeededSampler), not from a global RNG, so a batch is the same whatever
worker builds it, and a resumed run sees exactly the batches it would have seen. `augment` works on one
image in a loader worker; `augment_batch` is its twin for a whole batch on the device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF


def aug_params(seed: int) -> list[float]:
    """The five uniforms one sample's augmentation is drawn from (crop scale, aspect, top, left, angle)."""
    return torch.rand(5, generator=torch.Generator().manual_seed(seed)).tolist()


def _crop_box(u: list[float]) -> tuple[float, float, float, float]:
    """Crop height, width (shares of the side; scale 0.85-1, aspect 0.9-1.1) and the share of the
    free room above and left of it."""
    scale, ratio = 0.85 + 0.15 * u[0], math.exp(math.log(0.9) + (math.log(1.1) - math.log(0.9)) * u[1])
    return min(1.0, math.sqrt(scale / ratio)), min(1.0, math.sqrt(scale * ratio)), u[2], u[3]


def augment(img: torch.Tensor, seed: int) -> torch.Tensor:
    """Random-resized crop (scale 0.85-1, aspect 0.9-1.1) and rotation of up to 5 degrees."""
    u = aug_params(seed)
    _, h, w = img.shape
    fh, fw, ft, fl = _crop_box(u)
    ch, cw = min(h, round(h * fh)), min(w, round(w * fw))
    top, left = int(ft * (h - ch + 1)), int(fl * (w - cw + 1))
    img = TF.resized_crop(img, top, left, ch, cw, [h, w], antialias=True)
    return TF.rotate(img, angle=(u[4] * 2 - 1) * 5.0, interpolation=TF.InterpolationMode.BILINEAR)


def augment_batch(x: torch.Tensor, u: torch.Tensor, size: int) -> torch.Tensor:
    """The device-side twin of the dataset's resize + `augment`, for a batch of raw cached rows:
    uint8 [B,1,S,S] -> float [B,1,size,size] in [0,1]. An antialiased resize, then the crop and the
    rotation as one affine resampling. u [B,5] holds each row's aug_params (on the CPU: the affine
    matrices are built there and copied once); a NaN row is not augmented."""
    x = x.float().div_(255.0)
    u = u.cpu()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    todo = ~torch.isnan(u[:, 0])
    if not todo.any():
        return x
    # per row: rotation R (counter-clockwise on screen) in output space, then the crop box (scale S,
    # centre c): source = c + S R q. Corners that the rotation brings in from outside the crop are
    # black, as in `augment`, hence the rotation alone is also applied to an all-ones image.
    rot = torch.zeros(len(x), 2, 3)
    rot[:, 0, 0] = rot[:, 1, 1] = 1.0
    theta = rot.clone()
    for b in torch.nonzero(todo).flatten().tolist():  # a handful of scalars per image
        fh, fw, ft, fl = _crop_box(u[b].tolist())
        ch, cw = min(size, round(size * fh)), min(size, round(size * fw))  # the same whole pixels as augment
        top, left = int(ft * (size - ch + 1)), int(fl * (size - cw + 1))
        fh, fw, cy, cx = ch / size, cw / size, -1 + (2 * top + ch) / size, -1 + (2 * left + cw) / size
        a = math.radians((float(u[b, 4]) * 2 - 1) * 5.0)
        rot[b, :, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        theta[b] = torch.tensor([[fw * math.cos(a), -fw * math.sin(a), cx], [fh * math.sin(a), fh * math.cos(a), cy]])
    rot, theta = rot.to(x.device, non_blocking=True), theta.to(x.device, non_blocking=True)
    inside = F.grid_sample(torch.ones_like(x), F.affine_grid(rot, list(x.shape), align_corners=False),
                           mode="bilinear", padding_mode="zeros", align_corners=False)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) * inside
