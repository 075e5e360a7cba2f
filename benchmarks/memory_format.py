"""Contiguous vs channels-last on this machine, at the demo's sizes: an inference forward (what `infer`
and `evaluate` run) and a training step (forward, backward, AdamW), in images/s. Both layouts take
turns over three rounds and the median counts. Prints a table; --json also writes it.

    python benchmarks/memory_format.py [--backbones resnet18 convnext_tiny] [--size 160] [--batch 32]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from roi_consistency.files.atomic import write_json


def rate(fn, n_images: int, repeats: int = 3) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n_images / min(times)


@torch.no_grad()
def forward(model, x) -> None:
    model.eval()(x)


def train_step(model, x, opt) -> None:
    model.train()
    model(x).float().sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(name: str, size: int, batch: int, rounds: int = 3) -> dict:
    torch.manual_seed(0)
    results: dict[str, dict[str, list[float]]] = {}
    x = torch.randn(batch, 3, size, size)
    for _ in range(rounds):
        for layout, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            model = torchvision.models.get_model(name, num_classes=14).to(memory_format=fmt)
            xi = x.contiguous(memory_format=fmt)
            opt = torch.optim.AdamW(model.parameters(), 1e-3)

            r = results.setdefault(layout, {"forward": [], "train_step": []})
            r["forward"].append(rate(lambda m=model, xi=xi: forward(m, xi), batch))
            r["train_step"].append(rate(lambda m=model, xi=xi, o=opt: train_step(m, xi, o), batch, repeats=2))
    return {layout: {k: statistics.median(v) for k, v in r.items()} for layout, r in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "convnext_tiny"])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    out = {"size": a.size, "batch": a.batch, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "results": {}}
    print(f"images/s at {a.size} px, batch {a.batch}, {torch.get_num_threads()} threads, median of 3 rounds")
    print(f"{'backbone':<16}{'what':<12}{'contiguous':>12}{'channels-last':>15}{'ratio':>8}")
    for name in a.backbones:
        r = measure(name, a.size, a.batch)
        out["results"][name] = r
        for what in ("forward", "train_step"):
            c, cl = r["contiguous"][what], r["channels_last"][what]
            print(f"{name:<16}{what:<12}{c:>12.1f}{cl:>15.1f}{cl / c:>7.2f}x")
    if a.json:
        write_json(a.json, out, indent=2)


if __name__ == "__main__":
    main()
