"""Is the demo's training time the machine's compute or the loop's overhead? Times one classifier-stage
step of `--preset cpu-demo` (resnet18 from scratch, batch 16 plus 4 randomly masked copies, forward,
backward, AdamW) at the progressive sizes' ends, 128 and 160 px, on random input, and prints what the
91 steps of one demo epoch cost in compute alone, to set beside the epoch times in the training log.

Usage: python benchmarks/step_time.py [--steps 8]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from roi_consistency.model.config import PRESETS, TrainConfig
from roi_consistency.model.network import build_model
from roi_consistency.training.classifier import evalx_logits, n_masked
from roi_consistency.training.losses import classifier_loss

STEPS_PER_EPOCH = 91  # 1,447 training images at batch 16


def time_steps(model, opt, cfg, size: int, steps: int) -> dict:
    bs = cfg.optim.batch_size
    x = torch.rand(bs, 1, size, size).to(memory_format=torch.channels_last)
    y = (torch.rand(bs, len(cfg.data.classes)) > 0.7).float()
    times = {"forward": [], "backward": [], "optimizer": []}
    for i in range(steps + 2):  # the first two warm the allocator and oneDNN's kernel cache
        t0 = time.perf_counter()
        full, masked = evalx_logits(model, model.normalize(x), n_masked(cfg, bs), 0.2)
        loss, _ = classifier_loss(full, masked, y, cfg.method.evalx_weight)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            for k, dt in zip(times, (t1 - t0, t2 - t1, time.perf_counter() - t2)):
                times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per size (median)")
    args = ap.parse_args()
    cfg = TrainConfig().replace(**PRESETS["cpu-demo"])
    model = build_model(cfg.model, cfg.method, len(cfg.data.classes))
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.backbone.parameters(), lr=cfg.optim.lr)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for size in (128, 160):
        t = time_steps(model, opt, cfg, size, args.steps)
        step = sum(t.values())
        parts = ", ".join(f"{k} {v:.3f} s" for k, v in t.items())
        print(f"{size} px: step {step:.3f} s ({parts}); {STEPS_PER_EPOCH} steps = {STEPS_PER_EPOCH * step:.0f} s")


if __name__ == "__main__":
    main()
