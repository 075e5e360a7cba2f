"""Side-by-side speed figures; every ratio compares two runs made in this one process.

    python benchmarks/bench.py            # full size (minutes on a 2-core CPU)
    python benchmarks/bench.py --quick    # smoke size (CI)
    python benchmarks/bench.py --json bench.json

1. Loader: images/s at batch 32, same worker count, decoding 1024-px PNGs + resize vs the uint8 cache;
   and for training batches, resize + augmentation per image in the workers vs per batch on the device.
2. Training step: samples/s, fused [full; crop; drop] call vs three calls, channels-last on/off,
   torch.compile on/off; the variants take turns over three rounds and the median counts.
3. ROAD imputation: images/s at batch 16, 160-px films, blob regions like the random map's, the most
   relevant 10 % removed (MoRF) and only it kept (LeRF): pytorch-grad-cam's per-image sparse solve vs
   ours, batched on the device. road_speedup_vs_gradcam is the mean of the two orders' ratios.
4. Peak memory: process RSS, and CUDA max allocated where there is a GPU.
"""
from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from roi_consistency.data import nih
from roi_consistency.data.augment import augment_batch
from roi_consistency.data.cache import build_cache
from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.data.images import ImageCache
from roi_consistency.data.labels import FINDINGS
from roi_consistency.data.phantom import make_phantom
from roi_consistency.files.atomic import write_json
from roi_consistency.model.config import config
from roi_consistency.model.network import build_model
from roi_consistency.training import joint
from roi_consistency.training.losses import joint_loss


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Seeded(torch.utils.data.Sampler):
    """Indices with a per-sample seed, as training hands them over (switches augmentation on)."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return iter((i, 1000 + i) for i in range(self.n))

    def __len__(self) -> int:
        return self.n


def loader_rate(ds, workers: int, batch: int = 32, device: torch.device | None = None) -> float:
    """Images/s over one epoch after a warm-up epoch. With a device, raw batches are also resized and
    augmented there (`augment_batch`), and that time counts."""
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                        sampler=Seeded(len(ds)) if ds.augment else None)
    for _ in loader:  # warm-up epoch: workers start, files enter the page cache
        pass
    n, t0 = 0, time.perf_counter()
    for x, y, _ in loader:  # timed epoch, same persistent workers
        if device is not None:
            x = augment_batch(x[0].to(device, non_blocking=True), x[1], ds.size)
            if device.type == "cuda":
                torch.cuda.synchronize()
        n += len(y)
    return n / max(time.perf_counter() - t0, 1e-9)


def bench_loader(work: Path, n_images: int, src_size: int, img_size: int, workers: int,
                 device: torch.device) -> dict:
    data = work / "phantom"
    make_phantom(data, n_images=n_images, size=src_size, seed=1, progress=False)
    nih.unify(str(data), progress=False)
    csv_path = work / "all.csv"
    names = sorted(p.name for p in (data / "images").iterdir())
    csv_path.write_text("image,labels\n" + "".join(f"{n},Normal\n" for n in names))
    t0 = time.perf_counter()
    build_cache([str(csv_path)], str(data / "images"), img_size, str(work / "cache"), workers=workers, progress=False)
    build_s = time.perf_counter() - t0
    classes = list(FINDINGS)
    png = loader_rate(ImageCSVDataset(csv_path, data / "images", img_size, classes), workers)
    cached = loader_rate(ImageCSVDataset(csv_path, data / "images", img_size, classes,
                                         cache=ImageCache(work / "cache", img_size)), workers)
    # with augmentation (training): per image in the workers, or per batch on the device
    cache = ImageCache(work / "cache", img_size // 2)
    aug_workers = loader_rate(ImageCSVDataset(csv_path, data / "images", img_size // 2, classes, augment=True,
                                              cache=cache), workers)
    aug_device = loader_rate(ImageCSVDataset(csv_path, data / "images", img_size // 2, classes, augment=True,
                                             cache=cache, raw=True), workers, device=device)
    return {"images": len(names), "png_size": src_size, "img_size": img_size, "workers": workers,
            "png_images_per_s": png, "cache_images_per_s": cached, "cache_build_s": build_s,
            "loader_speedup_cache_vs_png": cached / png, "augment_size": img_size // 2,
            "augment_in_workers_images_per_s": aug_workers, "augment_on_device_images_per_s": aug_device}


def make_step(backbone: str, size: int, batch: int, passes: str, channels_last: bool, compile_: bool,
              device: torch.device, bf16: bool):
    """A warmed-up training step (model, optimizer and batch built once) as a closure."""
    torch.manual_seed(0)
    # the joint step of the reference (full, crop and drop, all with gradients): what fusing can speed up
    cfg = config(preset="seed", backbone=backbone, pretrained=False, img_size=size, drop_path=0.0)
    model = build_model(cfg.model, cfg.method, len(FINDINGS)).to(device).train()
    model.fused = passes == "fused"  # the variant measured; training picks it from the norm layers
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fwd = joint.Forward(model, cfg)
    fwd = torch.compile(fwd) if compile_ else fwd
    x = torch.rand(batch, 1, size, size, device=device).to(memory_format=fmt)
    y = (torch.rand(batch, len(FINDINGS), device=device) > 0.8).float()
    w = cfg.method.loss_weights()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            full, crop, drop, soft, _ = fwd(x)
            loss, _ = joint_loss(full, crop, drop, soft, y, w)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2 if not compile_ else 3):  # warm-up (and compilation)
        step()
    return step


def timed(step, steps: int, batch: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def bench_steps(configs, steps: int, device: torch.device, compile_: bool, repeats: int = 3) -> list[dict]:
    """samples/s per variant: the variants of a config take turns, `repeats` rounds, and the median
    counts, so a slow spell of a shared machine hits them all alike instead of one of them."""
    rows = []
    for backbone, size, batch in configs:
        bf16 = device.type == "cuda"
        variants = [("fused", True, False), ("separate", True, False), ("fused", False, False)]
        if compile_:
            variants.append(("fused", True, True))
        steppers = [make_step(backbone, size, batch, p, cl, comp, device, bf16) for p, cl, comp in variants]
        rates = [[] for _ in variants]
        for _ in range(repeats):
            for k, step in enumerate(steppers):
                rates[k].append(timed(step, steps, batch, device))
        for (passes, cl, comp), r in zip(variants, rates):
            rows.append({"backbone": backbone, "size": size, "batch": batch, "passes": passes,
                         "channels_last": cl, "compile": comp, "samples_per_s": float(np.median(r)),
                         "rounds": [round(v, 2) for v in r]})
        del steppers
    return rows


def bench_road(n: int, size: int, device: torch.device, batch: int = 16) -> dict:
    """ROAD's imputation on `n` images, per image with pytorch-grad-cam vs batched with ours."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from roi_consistency.evaluation.road import impute
    from roi_consistency.model.masks import random_maps, topk_mask
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 1, size // 8, size // 8, generator=g), size=(size, size),
                                             mode="bilinear")
    x = (0.8 * smooth + 0.2 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)
    top = topk_mask(random_maps(x.shape, "cpu", g), 0.1)
    imputer, out = NoisyLinearImputer(), {"images": n, "size": size, "batch": batch, "ratio": 0.1}
    for order, keep in (("morf", 1 - top), ("lerf", top)):
        t = time.perf_counter()
        for i in range(n):
            imputer(x[i], keep[i, 0])
        ref = n / (time.perf_counter() - t)
        xd, kd = x.to(device), keep.to(device)
        impute(xd[:batch], kd[:batch])  # warm-up
        sync(device)
        t = time.perf_counter()
        for i in range(0, n, batch):
            impute(xd[i:i + batch], kd[i:i + batch])
        sync(device)
        ours = n / (time.perf_counter() - t)
        out[order] = {"gradcam_images_per_s": ref, "ours_images_per_s": ours, "speedup": ours / ref}
    out["road_speedup_vs_gradcam"] = (out["morf"]["speedup"] + out["lerf"]["speedup"]) / 2
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def print_road(r: dict, device: torch.device) -> None:
    print(f"\nROAD imputation, {r['images']} films of {r['size']}px, batch {r['batch']}, "
          f"r = {r['ratio']} ({device.type})")
    for order in ("morf", "lerf"):
        o = r[order]
        print(f"  {order.upper():5s} pytorch-grad-cam {o['gradcam_images_per_s']:8.1f} img/s   ours "
              f"{o['ours_images_per_s']:8.1f} img/s   ({o['speedup']:.1f}x)")
    print(f"road_speedup_vs_gradcam {r['road_speedup_vs_gradcam']:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke size: seconds, for CI")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--compile", action="store_true", help="include torch.compile variants (slow to compile)")
    ap.add_argument("--workers", type=int, default=2, help="loader workers for both loaders")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if a.quick:
        loader_args, configs, steps = (48, 256, 64), [("resnet18", 32, 8)], 2
    elif device.type == "cuda":
        loader_args, configs, steps = (512, 1024, 224), [("convnext_base", 224, b) for b in (8, 32, 64)], 20
    else:
        loader_args, configs, steps = (256, 1024, 224), [("resnet18", 64, 8), ("convnext_tiny", 64, 8)], 8
    out = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads, "
                      f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}",
           "torch": torch.__version__, "quick": a.quick}
    with tempfile.TemporaryDirectory() as tmp:
        out["loader"] = bench_loader(Path(tmp), *loader_args, workers=a.workers, device=device)
    out["steps"] = bench_steps(configs, steps, device, a.compile, repeats=1 if a.quick else 3)
    out["road"] = bench_road(16 if a.quick else 64, 160, device)
    out["road_speedup_vs_gradcam"] = out["road"]["road_speedup_vs_gradcam"]
    fused = [r for r in out["steps"] if r["passes"] == "fused" and r["channels_last"] and not r["compile"]]
    sep = [r for r in out["steps"] if r["passes"] == "separate"]
    out["fused_speedup_vs_three_calls"] = min(f["samples_per_s"] / s["samples_per_s"] for f, s in zip(fused, sep))
    out["loader_speedup_cache_vs_png"] = out["loader"]["loader_speedup_cache_vs_png"]
    out["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20

    L = out["loader"]
    print(f"machine: {out['machine']}, torch {out['torch']}{' (quick)' if a.quick else ''}")
    print(f"\nloader, batch 32, {L['workers']} workers, {L['images']} PNGs of {L['png_size']}px -> {L['img_size']}px")
    print(f"  {'PNG decode + resize':28s} {L['png_images_per_s']:10.1f} img/s")
    print(f"  {'uint8 cache':28s} {L['cache_images_per_s']:10.1f} img/s   ({L['loader_speedup_cache_vs_png']:.1f}x)")
    print(f"  cache build: {L['cache_build_s']:.1f} s")
    print(f"  training batches from the {L['img_size']}px cache to {L['augment_size']}px, augmented:")
    print(f"  {'  resize+augment in workers':28s} {L['augment_in_workers_images_per_s']:10.1f} img/s")
    print(f"  {'  on the device (' + device.type + ')':28s} {L['augment_on_device_images_per_s']:10.1f} img/s")
    print(f"\ntraining step ({device.type}{', bf16' if device.type == 'cuda' else ''})")
    head = ("backbone", "size", "batch", "passes", "ch-last", "compile", "samples/s")
    print("  {:14s} {:>4s} {:>5s} {:>9s} {:>7s} {:>7s} {:>10s}".format(*head))
    for r in out["steps"]:
        print(f"  {r['backbone']:14s} {r['size']:4d} {r['batch']:5d} {r['passes']:>9s} {str(r['channels_last']):>7s} "
              f"{str(r['compile']):>7s} {r['samples_per_s']:10.1f}")
    print(f"\nfused_speedup_vs_three_calls {out['fused_speedup_vs_three_calls']:.2f}  "
          f"loader_speedup_cache_vs_png {out['loader_speedup_cache_vs_png']:.1f}")
    print_road(out["road"], device)
    print(f"peak RSS {out['peak_rss_mb']:.0f} MB" + (f", CUDA max allocated {out['cuda_max_allocated_mb']:.0f} MB"
                                                     if "cuda_max_allocated_mb" in out else ""))
    if a.json:
        write_json(a.json, out)


if __name__ == "__main__":
    sys.exit(main())
