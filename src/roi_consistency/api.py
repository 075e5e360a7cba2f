"""The Python API: a trained model, as a notebook uses it.

    import roi_consistency as rc
    model = rc.load("checkpoints/nih_roi_consistency.best.pt")
    preds = model.predict(["a.png", "b.png"])       # one dict per image: prob {finding: p}, positive [findings]
    maps = model.explain(images, finding="Nodule")  # float32 [N, H, W], the learned map; higher = more relevant
    out = model.crop_drop(images, keep_ratio=0.1)   # p full / crop / drop [N, C], and the binary masks [N, H, W]

Images are paths, PIL images, uint8 arrays ([H, W] or [H, W, 3 or 4], 0-255), float arrays in [0, 1],
or tensors ([H, W], [1, H, W], or a batch [N, 1, H, W], in [0, 1]). Each becomes one channel at the
checkpoint's image size (bilinear, antialiased: what training read from its PNGs); H = W = img_size.
Normalisation, keep ratio and fill always come from the checkpoint. `roi-consistency infer` runs the
same `Model.score`, so it gives the same numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from roi_consistency.data.images import gray_resized, load_image
from roi_consistency.errors import UserError
from roi_consistency.evaluation.thresholds import called
from roi_consistency.model.masks import random_maps, topk_mask
from roi_consistency.model.network import Explanation, ROIModel
from roi_consistency.model.trained import load_trained
from roi_consistency.runtime import pick_device


def as_tensor(image, size: int) -> torch.Tensor:
    """One image as float32 [1, size, size] in [0, 1]."""
    if isinstance(image, (str, Path)):
        return load_image(image, size).float().div_(255)
    if isinstance(image, Image.Image):
        return gray_resized(image, size).float().div_(255)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return gray_resized(Image.fromarray(image), size).float().div_(255)
    t = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image).float()
    if image.dtype in (np.uint8, torch.uint8):
        t = t / 255
    if t.ndim == 3 and t.shape[-1] in (3, 4) and t.shape[0] not in (1, 3, 4):  # [H, W, C] array
        t = t[..., :3].mean(-1)
    t = t.reshape(-1, *t.shape[-2:]).mean(0, keepdim=True) if t.ndim == 3 else t[None]
    if t.ndim != 3:
        raise UserError(f"an image must be [H, W], [1, H, W] or [H, W, 3]; got shape {tuple(image.shape)}")
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return t.clamp_(0, 1)


def as_list(images) -> list:
    """A batch [N, 1, H, W] (tensor or array) as its images; one image as a list of one."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (str, Path, Image.Image, torch.Tensor, np.ndarray)):
        return [images]
    return list(images)


class Model:
    """A trained checkpoint: `predict`, `explain`, `crop_drop`, and `score` for batches already prepared."""

    def __init__(self, net: ROIModel, cfg):
        self.net, self.cfg = net, cfg
        self.classes: list[str] = list(cfg.data.classes)
        self.img_size: int = cfg.model.img_size
        self.keep_ratio: float = cfg.method.keep_ratio
        self.thresholds: dict | None = net.thresholds  # {"rule", "values": {finding: p or None}, ...}
        self.trained_on: dict | None = net.trained_on  # {"device", "name", "threads", "torch", ...} or None

    @property
    def device(self) -> torch.device:
        return self.net.mean.device

    def to(self, device) -> "Model":
        self.net.to(device)
        return self

    def batches(self, images, batch_size: int, progress: bool):
        """The images as [B, 1, S, S] float batches on the model's device."""
        items = as_list(images)
        for s in tqdm(range(0, len(items), batch_size), desc="images", unit="batch", disable=not progress):
            yield torch.stack([as_tensor(im, self.img_size) for im in items[s:s + batch_size]]).to(self.device)

    @torch.no_grad()
    def score(self, x: torch.Tensor, keep_ratio: float | None = None) -> dict[str, torch.Tensor]:
        """On a batch x [B, 1, S, S] in [0, 1]: probabilities full/crop/drop [B, C], the map, its binary mask
        and the explained class (the most probable; None for the reference's single map)."""
        r = self.keep_ratio if keep_ratio is None else keep_ratio
        xn = self.net.normalize(x)
        random_map = self.cfg.method.mode == "random_mask"  # the control: its region is random
        e = Explanation(random_maps(xn.shape, xn.device), None, None) if random_map else self.net.explain(xn)
        m = topk_mask(e.maps, r)
        out = self.net.backbone(torch.cat([xn, *self.net.crop_drop(xn, m.to(xn.dtype))])).float()
        p_full, p_crop, p_drop = torch.sigmoid(out).chunk(3)
        return {"full": p_full, "crop": p_crop, "drop": p_drop, "mask": m, "maps": e.maps, "xn": xn,
                "explained": e.cls}

    def positive(self, probs: dict[str, float]) -> list[str] | None:
        """The findings at or above their threshold (None without thresholds)."""
        if self.thresholds is None:
            return None
        hits = called(np.array([probs[c] for c in self.classes]), self.classes, self.thresholds)
        return [c for c, hit in zip(self.classes, hits) if hit]

    def predict(self, images, batch_size: int = 16, progress: bool = False) -> list[dict]:
        """Per image {"prob": {finding: p on the full image}, "positive": [findings] or None}."""
        out = []
        for x in self.batches(images, batch_size, progress):
            with torch.no_grad():
                p = torch.sigmoid(self.net(x).float()).cpu().double().numpy()
            for row in p:
                probs = dict(zip(self.classes, row.tolist()))
                out.append({"prob": probs, "positive": self.positive(probs)})
        return out

    def explain(self, images, finding: str | None = None, batch_size: int = 16, progress: bool = False) -> np.ndarray:
        """The learned map of each image, float32 [N, S, S], for `finding` (None: each image's most
        probable one); higher = more relevant, so its top keep_ratio share is the mask."""
        if finding is not None and finding not in self.classes:
            raise UserError(f"finding {finding!r}: not one of this model's classes ({', '.join(self.classes)})")
        maps = []
        for x in self.batches(images, batch_size, progress):
            cls = torch.full((len(x),), -1 if finding is None else self.classes.index(finding), device=x.device)
            with torch.no_grad():
                maps.append(self.net.explain(self.net.normalize(x), cls).maps[:, 0].float().cpu().numpy())
        return np.concatenate(maps)

    def crop_drop(self, images, keep_ratio: float | None = None, batch_size: int = 16, progress: bool = False) -> dict:
        """{"full", "crop", "drop"}: probabilities float64 [N, C] on the image, with only the map's top
        keep_ratio region kept, and with it removed (the checkpoint's fill); "mask": bool [N, S, S];
        "mask_class": the finding each map explains (None for the reference's single map)."""
        parts = [self.score(x, keep_ratio) for x in self.batches(images, batch_size, progress)]
        out = {k: np.concatenate([s[k].cpu().double().numpy() for s in parts]) for k in ("full", "crop", "drop")}
        out["mask"] = np.concatenate([s["mask"][:, 0].cpu().numpy() > 0.5 for s in parts])
        explained = [s["explained"] for s in parts]
        out["mask_class"] = None if explained[0] is None else [self.classes[int(c)] for e in explained for c in e]
        return out


def load(path: str | Path, device: str = "auto") -> Model:
    """A checkpoint written by `roi-consistency train` (or `calibrate`), or a folder written by `export`,
    ready to use on `device` (auto: CUDA when available)."""
    net, cfg = load_trained(path, pick_device(device))
    return Model(net, cfg)
