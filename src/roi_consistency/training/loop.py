"""What every training stage's loop shares: the micro-batch loop with gradient accumulation, the
warm-up + cosine schedule, the loaders, and the validation gather across DDP ranks.

A stage (stage.py: classifier, mask, joint) supplies the loss of one micro-batch; `run_epoch`
does the rest: `no_sync()` on all but the last micro-batch of a window, one optimizer and schedule step
per window, a progress bar whose figures cost one host sync per `log_every` steps, periodic saves, and
a stop (Ctrl+C or --max-steps) only at a window boundary, so a checkpoint never holds half a window.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from roi_consistency.errors import UserError
from roi_consistency.evaluation.metrics import choose_thresholds, mean_auroc, per_class_auroc
from roi_consistency.runtime import Runtime, StopFlag, ignore_stop_signals
from roi_consistency.training.losses import TERMS
from roi_consistency.training.state import Position, rng_state


@dataclass
class LoopSettings:
    rt: Runtime
    accum_steps: int
    log_every: int
    stop: StopFlag
    stop_at: int | None  # the stage's step at which --max-steps is reached (None: never)
    save_every: int
    save: Callable[[], None]  # writes a resumable checkpoint of the current position


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to the base lr, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def log_uniform(lo: float, hi: float, generator: torch.Generator | None = None) -> float:
    """A draw between lo and hi, uniform in log space (the keep ratios of random and training masks)."""
    return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand((), generator=generator).item())


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup_frac: float):
    total = max(1, total)
    warm = max(1, round(warmup_frac * total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warm))


def make_loader(ds, sampler, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    kw = dict(num_workers=workers, pin_memory=device.type == "cuda",
              generator=torch.Generator())  # own generator: never consume the global RNG
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=6, worker_init_fn=ignore_stop_signals)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, **kw)


def should_stop(pos: Position, loop: LoopSettings) -> bool:
    """Under DDP the ranks agree (one all-reduce per log interval), or one rank would stop while another
    waits in the next gradient all-reduce."""
    if loop.stop_at is not None and pos.step >= loop.stop_at:
        return True
    if not loop.rt.ddp:
        return loop.stop.set
    if pos.step % loop.log_every:
        return False
    signum = torch.tensor([float(loop.stop.signum or 0)], device=loop.rt.device)
    dist.all_reduce(signum, op=dist.ReduceOp.MAX)
    agreed = int(signum.item())  # the reduced value, never the local flag, which a signal may set meanwhile
    if agreed and not loop.stop.set:  # another rank was signalled: stop, and exit, as it does
        loop.stop.set, loop.stop.signum = True, agreed
    return bool(agreed)


MAX_NONFINITE = 3  # losses in a row that stop a run


class Meter:
    """The loss terms of an epoch's micro-batches, summed on the device (between two logs, and over the
    epoch), and the longest run of non-finite losses. Read on the host only at a log point."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(TERMS) + 1, device=device)  # terms + total
        self.epoch = torch.zeros_like(self.sums)
        self.bad_run, self.worst = torch.zeros((), device=device), torch.zeros((), device=device)
        self.n_log, self.n, self.seen, self.t0, self.images_per_s = 0, 0, 0, time.perf_counter(), 0.0
        self.present = {"loss"}

    def add(self, loss: torch.Tensor, terms: dict, images: int) -> None:
        self.present |= terms.keys()
        self.bad_run = torch.where(torch.isfinite(loss.detach()), 0, self.bad_run + 1)
        self.worst = torch.maximum(self.worst, self.bad_run)
        row = torch.stack([terms.get(k, loss.new_zeros(())).float() for k in TERMS] + [loss.detach().float()])
        self.sums, self.epoch = self.sums + row, self.epoch + row
        self.n_log, self.n, self.seen = self.n_log + 1, self.n + 1, self.seen + images

    def log(self, where: str) -> float:
        """The mean loss since the last log; stops the run after MAX_NONFINITE non-finite losses in a row."""
        if self.worst.item() >= MAX_NONFINITE:
            raise UserError(f"the loss was not finite for {int(self.worst.item())} steps in a row ({where}): stopped "
                            "without saving, so the last checkpoint is from before. Lower --lr, or check the data")
        loss = (self.sums[-1] / max(self.n_log, 1)).item()
        self.images_per_s = self.seen / max(time.perf_counter() - self.t0, 1e-9)
        self.sums.zero_()
        self.n_log = 0
        return loss

    def epoch_terms(self) -> dict:
        mean = (self.epoch / max(self.n, 1)).tolist()
        return {k: v for k, v in zip(TERMS + ("loss",), mean) if k in self.present} if self.n else {}


def run_epoch(net, step_loss: Callable, optimizer, scheduler, loader, pos: Position, loop: LoopSettings,
              n_batches: int, desc: str) -> dict:
    """One epoch, or the rest of one from pos.batch. step_loss(x, y) -> (loss, terms) runs one micro-batch
    through `net` (the DDP-wrapped forward). Advances pos; returns the epoch's mean terms, its images/s,
    and whether it stopped early."""
    rt, accum, meter = loop.rt, loop.accum_steps, Meter(loop.rt.device)
    bar = tqdm(total=n_batches, initial=pos.batch, unit="batch", desc=desc, disable=not rt.main,
               dynamic_ncols=True, leave=True)
    it, stopped, b = iter(loader), False, pos.batch  # pos.batch moves only at window boundaries
    while b < n_batches:
        if b % accum == 0 and should_stop(pos, loop):
            stopped = True
            break
        try:
            x, y, _ = next(it)
        except (RuntimeError, StopIteration):
            if loop.stop.set:  # the loader's workers died with the same Ctrl+C
                stopped = True
                break
            raise
        start = b - b % accum
        window = min(accum, n_batches - start)  # a short last window averages fewer batches
        last = b - start + 1 == window
        with contextlib.nullcontext() if (last or not rt.ddp) else net.no_sync():
            with rt.autocast():
                loss, terms = step_loss(x, y)
            (loss / window).backward()
        meter.add(loss, terms, len(y) * rt.world)
        b += 1
        bar.update(1)
        if not last:
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        pos.batch, pos.step, pos.rng = b, pos.step + 1, rng_state()
        save_now = loop.save_every and pos.step % loop.save_every == 0
        if pos.step % loop.log_every == 0 or b == n_batches or save_now:  # the only host syncs
            loss_now = meter.log(f"{desc.split(' (')[0]}, step {pos.step}")
            bar.set_postfix(loss=f"{loss_now:.4f}", img_s=f"{meter.images_per_s:.1f}",
                            lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if save_now:
            loop.save()
    bar.close()
    return {"terms": meter.epoch_terms(), "images_per_s": meter.images_per_s, "stopped": stopped}


class Validation:
    """What a stage's validate collects: each image's probabilities and labels, and the terms of the stage's
    own objective, weighted by how many images (or pairs) they were measured on."""

    def __init__(self):
        self.probs, self.labels, self.idx, self.sums, self.n = [], [], [], {}, 0

    def images(self, logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        self.probs.append(torch.sigmoid(logits.float()).cpu())
        self.labels.append(y)
        self.idx.append(idx)

    def terms(self, weight: int, terms: dict) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
        self.n += weight

    def metrics(self, rt: Runtime, classes: list[str], rule: str = "youden") -> dict:
        """The row every stage's validate returns: its own objective (val_loss, val_<term>) next to AUROC,
        over every rank (the distributed sampler pads with repeats: each image counts once), and the
        per-class operating points `rule` chooses on these probabilities (the same on every rank)."""
        local = (torch.cat(self.probs).numpy(), torch.cat(self.labels).numpy(), torch.cat(self.idx).numpy(),
                 self.sums, self.n)
        parts = [local]
        if rt.ddp:
            parts = [None] * rt.world
            dist.all_gather_object(parts, local)
        p, y, order = (np.concatenate([q[k] for q in parts]) for k in range(3))
        _, first = np.unique(order, return_index=True)
        n = max(sum(q[4] for q in parts), 1)
        out = {f"val_{k}": sum(q[3][k] for q in parts) / n for k in self.sums}
        if "val_kept" in out:
            out["kept_fraction"] = out.pop("val_kept")
        per_class = per_class_auroc(y[first], p[first], classes)
        return {**out, "val_mean_auroc": mean_auroc(per_class), "auroc": per_class, "n_val": int(len(first)),
                "thresholds": choose_thresholds(y[first], p[first], classes, rule)}
