"""Training: `fit(cfg)` runs epochs of `train_one_epoch` and `evaluate`, saves and resumes checkpoints,
and runs the same code on CPU, one GPU, or many GPUs under torchrun (DDP).

    roi-consistency train --train-csv nih_roi_train.csv --val-csv nih_roi_val.csv --image-root images
    torchrun --nproc_per_node=8 -m roi_consistency train …

Resuming is exact: the sampler can start part-way through an epoch, augmentation is seeded per
sample, and checkpoints are only taken at optimizer-step boundaries together with the RNG state
at that boundary. So an interrupted-then-resumed CPU run ends with the same weights as a straight one.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from roi_consistency.cache import ImageCache
from roi_consistency.checkpoint import best_path, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from roi_consistency.config import TrainConfig, mask_head_of
from roi_consistency.data import ImageCSVDataset, SeededSampler, augment_batch, normal_mean_image
from roi_consistency.errors import UserError
from roi_consistency.losses import TERMS, classifier_stage_loss, mask_stage_loss, roi_loss
from roi_consistency.metrics import mean_auroc, per_class_auroc
from roi_consistency.model import ROIModel, build_model


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str = "auto") -> Runtime:
    """Read torchrun's environment; start the process group when there is more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for any fp32 matmul left outside autocast
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Runtime(dev, rank, world, local_rank)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to the base lr, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl+C reaches every process in the group; loader workers ignore it so the main process can
    # finish the step it is on and write a checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(ds, sampler, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    kw = dict(num_workers=workers, pin_memory=device.type == "cuda",
              generator=torch.Generator())  # own generator: never consume the global RNG
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=6, worker_init_fn=_ignore_sigint)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, **kw)


class StopFlag:
    """First Ctrl+C asks the loop to stop at the next step boundary and save; a second one aborts."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        if sys.platform != "win32" and threading_main():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        try:  # stderr may be a pipe whose reader (tee) died with the same Ctrl+C
            print("\nstopping: saving a checkpoint at the next step (Ctrl+C again to abort)", file=sys.stderr)
        except OSError:
            pass

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


class Trainer:
    """Holds what the loop mutates (model, optimizer, schedule, position) and builds checkpoints."""

    def __init__(self, cfg: TrainConfig, rt: Runtime, resuming: bool = False):
        self.cfg, self.rt = cfg, rt
        self.amp = cfg.bf16 if cfg.bf16 is not None else rt.device.type == "cuda"
        # Channels-last is faster on CUDA and on the CPU too (oneDNN: 1.2x forward for resnet18, 5x for
        # its max-pool; BENCHMARKS.md), and never slower for the backbones measured.
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else True
        self.weights = cfg.loss_weights()
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        # On resume the checkpoint overwrites every weight: no need to fetch pretrained ones.
        self.model: ROIModel = build_model(cfg.to_dict(), load_pretrained=not resuming).to(rt.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mask_learns = cfg.mode not in ("standard", "random_mask") and any(
            self.weights[k] > 0 for k in ("alpha", "beta", "gamma", "delta"))
        self.model.mask_net.requires_grad_(self.mask_learns)  # DDP must not wait for unused parameters
        torch.manual_seed(cfg.seed + rt.rank)  # but independent drop-path/random-mask noise per rank
        groups = [{"params": [p for p in self.model.backbone.parameters() if p.requires_grad], "lr": cfg.lr},
                  {"params": [p for p in self.model.mask_net.parameters() if p.requires_grad],
                   "lr": cfg.mask_lr or cfg.lr}]
        self.group_names = [n for n, g in zip(("backbone", "mask"), groups) if g["params"]]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.epoch, self.batch_in_epoch, self.step, self.best = 0, 0, 0, None
        self.history: list[dict] = []
        self.boundary_rng = rng_state()

    def phase(self, epoch: int) -> str:
        """joint, or for two_stage: classifier (before mask_start_epoch), then mask."""
        if self.cfg.objective != "two_stage":
            return "joint"
        return "classifier" if epoch < self.cfg.mask_start() else "mask"

    def input_size(self, epoch: int) -> int:
        """The training input size of an epoch. With --img-size-start the epochs that train the classifier
        (the classifier stage, or every joint epoch) grow it linearly, in steps of 8 px, to --img-size
        by their last epoch: early epochs learn the coarse findings at a fraction of the cost."""
        cfg = self.cfg
        n = cfg.mask_start() if cfg.objective == "two_stage" else cfg.epochs
        start = min(cfg.img_size_start or cfg.img_size, cfg.img_size)  # a preset's start above --img-size: no ramp
        if epoch >= n - 1:
            return cfg.img_size
        return int(round((start + (cfg.img_size - start) * epoch / (n - 1)) / 8) * 8)

    def set_phase(self, phase: str) -> None:
        """Only the part that learns in this phase keeps requires_grad: the classifier stage never runs
        the mask network, and the mask stage needs gradients for the input pixels only, not for the
        frozen classifier's weights (about a third of its backward pass)."""
        self.model.backbone.requires_grad_(phase != "mask")
        self.model.mask_net.requires_grad_(self.mask_learns and phase != "classifier")
        self.model.frozen_backbone = phase == "mask"

    def attach_schedule(self, steps_per_epoch: int) -> None:
        """Warm-up + cosine per parameter group over the steps where that group trains, 0 elsewhere."""
        cfg, total = self.cfg, max(1, steps_per_epoch * self.cfg.epochs)

        def span(start: int, end: int):
            n = max(1, end - start)
            warm = max(1, round(cfg.warmup_frac * n))
            return lambda s: lr_factor(s - start, n, warm) if start <= s < end else 0.0

        if cfg.objective == "two_stage":
            split = steps_per_epoch * cfg.mask_start()
            by_group = {"backbone": span(0, split), "mask": span(split, total)}
        else:
            by_group = {"backbone": span(0, total), "mask": span(0, total)}
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [by_group[n] for n in self.group_names])

    def state(self) -> dict:
        m = self.model
        return {"backbone": m.backbone.state_dict(), "mask_net": m.mask_net.state_dict(),
                "classes": list(self.cfg.classes), "config": self.cfg.to_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "best_metric": self.best, "rng": self.boundary_rng, "history": self.history,
                "fill_image": None if m.fill_image is None else m.fill_image.cpu()}

    def load(self, ckpt: dict) -> None:
        self.model.backbone.load_state_dict(ckpt["backbone"])
        self.model.mask_net.load_state_dict(ckpt["mask_net"])
        self.model.set_fill(ckpt.get("fill_image"))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.batch_in_epoch, self.step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        self.best, self.history = ckpt["best_metric"], list(ckpt["history"])
        self.boundary_rng = ckpt["rng"]
        set_rng_state(ckpt["rng"])

    def save(self, path) -> None:
        if self.rt.main:
            save_checkpoint(self.state(), path)

    def to_device(self, x, size: int | None = None) -> torch.Tensor:
        """A loader batch as model input, at `size` px (default: --img-size). Raw cached rows, (uint8
        images, augmentation parameters), are copied as bytes and resized and augmented here, on the device."""
        size = size or self.cfg.img_size
        if isinstance(x, (list, tuple)):
            img, u = x  # the parameters stay on the host, where the affine matrices are built
            x = augment_batch(img.to(self.rt.device, non_blocking=True), u, size)
        else:
            x = x.to(self.rt.device, non_blocking=True)
            if x.shape[-1] != size:  # a progressive-resizing epoch: the workers' fixed size, resized again
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x.to(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        return torch.autocast(self.rt.device.type, dtype=torch.bfloat16, enabled=self.amp)


def should_stop(tr: Trainer, stop: StopFlag) -> bool:
    """Checked only at accumulation-window boundaries, so a checkpoint never holds half a window.
    Under DDP the ranks agree (one all-reduce per log interval), or one rank would stop while another
    waits in the next gradient all-reduce."""
    if tr.cfg.max_steps and tr.step >= tr.cfg.max_steps:
        return True
    if not tr.rt.ddp:
        return stop.set
    if tr.step % tr.cfg.log_every:
        return False
    flag = torch.tensor([float(stop.set)], device=tr.rt.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def log_uniform(lo: float, hi: float) -> float:
    return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(()).item())


def class_pairs(y: torch.Tensor, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, classes): one pair per true finding of every image, the batch a class-specific mask is
    trained on. An image without findings has nothing to explain and is left out, unless no image in
    the batch has one: then every image is paired with class -1 (its most probable class), so each
    step still trains (and DDP ranks stay in step). With more than `limit` pairs a random `limit` of
    them are kept, so a batch of images with many findings cannot exhaust memory."""
    rows, cls = (y > 0.5).nonzero(as_tuple=True)
    if not len(rows):
        return torch.arange(len(y)), torch.full((len(y),), -1, dtype=torch.long)
    if limit is not None and len(rows) > limit:
        keep = torch.randperm(len(rows))[:limit].sort().values
        rows, cls = rows[keep], cls[keep]
    return rows, cls


def wrap(tr: Trainer, phase: str):
    """The model as the loop calls it: DDP and torch.compile wrappers, built for the phase's trainable
    parameters (DDP registers exactly those, so it is rebuilt when the phase changes)."""
    tr.set_phase(phase)
    m = tr.model
    if tr.rt.ddp:
        m = DDP(m, device_ids=[tr.rt.local_rank] if tr.rt.device.type == "cuda" else None)
    return torch.compile(m) if tr.cfg.compile else m  # checkpoints still come from the plain tr.model


def train_one_epoch(tr: Trainer, ddp_model, loader, micro_total: int, stop: StopFlag) -> bool:
    """One epoch (or the rest of one). Returns False when stopped early (Ctrl+C or --max-steps)."""
    cfg, accum = tr.cfg, tr.cfg.accum_steps
    phase, size = tr.phase(tr.epoch), tr.input_size(tr.epoch)
    ddp_model.train()
    if phase == "mask":
        tr.model.backbone.eval()  # frozen classifier: no BatchNorm statistics updates, no dropout
    sums = torch.zeros(len(TERMS) + 1, device=tr.rt.device)  # terms + total, summed between logs
    epoch_sums = torch.zeros_like(sums)
    n_sum, n_epoch, seen, t0 = 0, 0, 0, time.perf_counter()
    bar = tqdm(total=micro_total, initial=tr.batch_in_epoch, unit="batch", disable=not tr.rt.main,
               desc=f"epoch {tr.epoch + 1}/{cfg.epochs} ({phase}, {size}px)", dynamic_ncols=True, leave=True)
    b = tr.batch_in_epoch
    it = iter(loader)
    while b < micro_total:
        if b % accum == 0 and should_stop(tr, stop):
            bar.close()
            return False
        try:
            x, y, _ = next(it)
        except (RuntimeError, StopIteration):
            if stop.set:
                return False
            raise
        window_start = b - b % accum
        window = min(accum, micro_total - window_start)  # a short last window averages fewer batches
        last = b - window_start + 1 == window
        sync = contextlib.nullcontext() if (last or not tr.rt.ddp) else ddp_model.no_sync()
        with sync:
            with tr.autocast():
                yd = y.to(tr.rt.device, non_blocking=True)
                if phase == "classifier":  # EVAL-X: random masks of a random size, label kept
                    r = (log_uniform(cfg.min_keep_ratio, 0.6) if cfg.min_keep_ratio
                         else 0.05 + 0.55 * torch.rand(()).item())
                    n = min(len(y), math.ceil(cfg.evalx_weight * len(y)))
                    loss, terms = classifier_stage_loss(ddp_model(tr.to_device(x, size), keep_ratio=r, evalx=n),
                                                        yd, cfg.evalx_weight)
                elif phase == "mask":
                    r = log_uniform(cfg.min_keep_ratio, cfg.keep_ratio) if cfg.min_keep_ratio else None
                    xd, cls = tr.to_device(x), None
                    if tr.model.class_specific:  # each map explains one finding: train (image, finding) pairs
                        # at most two pairs per image on average: memory stays bounded on images with many findings
                        rows, cls = (t.to(tr.rt.device) for t in class_pairs(y, limit=2 * len(y)))
                        xd, yd = xd[rows], yd[rows]
                    out = ddp_model(xd, keep_ratio=r, cls=cls)
                    focus = None if out["explained"] is None else F.one_hot(out["explained"], y.shape[1])
                    loss, terms = mask_stage_loss(out, yd, tr.weights, focus, cfg.mask_loss)
                else:
                    loss, terms = roi_loss(ddp_model(tr.to_device(x, size)), yd, tr.weights)
            (loss / window).backward()
        step_terms = torch.stack([terms[k] for k in TERMS] + [loss.detach().float()])
        sums += step_terms
        epoch_sums += step_terms
        n_sum, n_epoch = n_sum + 1, n_epoch + 1
        seen += len(y) * tr.rt.world
        b += 1
        bar.update(1)
        if not last:
            continue
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        tr.scheduler.step()
        tr.step += 1
        tr.batch_in_epoch = b
        tr.boundary_rng = rng_state()
        if tr.step % cfg.log_every == 0 or b == micro_total:
            vals = (sums / max(n_sum, 1)).tolist()  # the only host sync, once per log interval
            ips = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{vals[-1]:.4f}", bce=f"{vals[0]:.4f}", img_s=f"{ips:.1f}",
                            lr=f"{max(tr.scheduler.get_last_lr()):.2e}", phase=phase)
            tr.images_per_s = ips
            sums.zero_()
            n_sum = 0
        if cfg.save_every and tr.step % cfg.save_every == 0:
            tr.save(cfg.save)
    bar.close()
    if n_epoch:  # the epoch's mean loss terms (of what this process trained since it started)
        tr.last_train = dict(zip(TERMS + ("loss",), (epoch_sums / n_epoch).tolist()))
    return True


@torch.no_grad()
def evaluate(model: ROIModel, loader, tr: Trainer) -> dict:
    """Validation loss, per-class and mean AUROC (full image), and the mask's kept fraction."""
    model.eval()
    # The classifier stage of two_stage has no trained mask yet: score the full image only.
    full_only = tr.phase(tr.epoch) == "classifier"
    probs, labels, idx, loss_sum, kept_sum, n = [], [], [], 0.0, 0.0, 0
    for x, y, i in tqdm(loader, desc="validate", unit="batch", disable=not tr.rt.main, leave=False):
        with tr.autocast():
            xd = tr.to_device(x)
            out = {"full": model.backbone(model.normalize(xd))} if full_only else model(xd)
            loss, _ = roi_loss(out, y.to(tr.rt.device), tr.weights)
        probs.append(torch.sigmoid(out["full"].float()).cpu())
        labels.append(y)
        idx.append(i)
        loss_sum += float(loss) * len(y)
        kept_sum += float(out["mask"].float().mean()) * len(y) if not full_only else 0.0
        n += len(y)
    local = (torch.cat(probs).numpy(), torch.cat(labels).numpy(), torch.cat(idx).numpy(), loss_sum, kept_sum, n)
    parts = [local]
    if tr.rt.ddp:
        parts = [None] * tr.rt.world
        dist.all_gather_object(parts, local)
    p = np.concatenate([q[0] for q in parts])
    y = np.concatenate([q[1] for q in parts])
    order = np.concatenate([q[2] for q in parts])
    _, first = np.unique(order, return_index=True)  # the distributed sampler pads with repeats
    per_class = per_class_auroc(y[first], p[first], tr.cfg.classes)
    total_n = sum(q[5] for q in parts)
    return {"val_loss": sum(q[3] for q in parts) / total_n, "val_mean_auroc": mean_auroc(per_class),
            "kept_fraction": None if full_only else sum(q[4] for q in parts) / total_n, "auroc": per_class,
            "n_val": int(len(first))}


def append_log(path: str, row: dict, classes: list[str]) -> None:
    cols = (["epoch", "step", "lr", "seconds", "images_per_s"] + [f"train_{k}" for k in TERMS + ("loss",)]
            + ["val_loss", "val_mean_auroc", "kept_fraction"] + [f"auroc_{c}" for c in classes])
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def fill_from_weights(path: str | None) -> torch.Tensor | None:
    """The fill image stored in a checkpoint of this tool given as --weights (None otherwise)."""
    if not path:
        return None
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return ck.get("fill_image") if isinstance(ck, dict) else None


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings that would crash mid-run, naming the flag."""
    if not 0 < cfg.keep_ratio < 1:
        raise UserError(f"--keep-ratio must be between 0 and 1, got {cfg.keep_ratio}")
    for flag, value in (("--accum-steps", cfg.accum_steps), ("--batch-size", cfg.batch_size),
                        ("--log-every", cfg.log_every), ("--epochs", cfg.epochs), ("--img-size", cfg.img_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if cfg.img_size_start and cfg.img_size_start < 32:
        raise UserError(f"--img-size-start must be at least 32, got {cfg.img_size_start}; 0 turns progressive "
                        "resizing off")
    if cfg.objective == "two_stage" and not any(v > 0 for v in cfg.loss_weights().values()):
        raise UserError("--objective two_stage: every mask term has weight 0 (--alpha/--beta/--gamma/--delta, "
                        "--mode), so the mask stage would have nothing to learn")
    if (cfg.objective == "two_stage" and cfg.min_keep_ratio is not None
            and not 0 < cfg.min_keep_ratio <= cfg.keep_ratio):
        raise UserError(f"--min-keep-ratio must be in (0, --keep-ratio={cfg.keep_ratio}], got {cfg.min_keep_ratio}")
    if cfg.objective == "two_stage" and not 0 <= cfg.mask_start() < cfg.epochs:
        raise UserError(f"--objective two_stage needs a mask stage: --mask-start-epoch ({cfg.mask_start()}) "
                        f"must be below --epochs ({cfg.epochs})")
    if cfg.objective == "two_stage" and cfg.mask_start() == 0 and not cfg.weights:
        raise UserError("--mask-start-epoch 0 trains only the mask, against a classifier that must come from "
                        "--weights (e.g. an earlier checkpoint of this tool)")


def fit(cfg: TrainConfig) -> dict:
    """Train according to cfg; returns the last epoch's metrics and the checkpoint paths."""
    rt = setup_runtime(cfg.device)
    resume_ckpt = None
    if cfg.resume:
        resume_ckpt = load_checkpoint(cfg.resume)
        # The resumed run continues the saved config. Run settings come from this invocation, and
        # where the data lives may move (given explicitly, i.e. not left at its default).
        keep = {k: getattr(cfg, k) for k in ("epochs", "max_steps", "resume", "save", "save_every", "workers",
                                              "device", "log_csv", "tensorboard")}
        defaults = TrainConfig()
        keep.update({k: getattr(cfg, k) for k in ("train_csv", "val_csv", "image_root", "cache")
                     if getattr(cfg, k) != getattr(defaults, k)})
        cfg = TrainConfig.from_dict({**resume_ckpt["config"], **keep})
    if cfg.objective == "two_stage" and cfg.mask_start_epoch is None:
        # fixed now (and saved), so a resume with other --epochs keeps the stage boundary
        cfg = dataclasses.replace(cfg, mask_start_epoch=cfg.mask_start())
    # saved resolved, so the checkpoint's head never depends on what "auto" means in a later version
    cfg = dataclasses.replace(cfg, mask_head=mask_head_of(cfg.to_dict()))
    check_config(cfg)
    cache = ImageCache(cfg.cache, cfg.img_size) if cfg.cache else None
    raw = cache is not None and (cfg.device_transforms if cfg.device_transforms is not None
                                 else rt.device.type == "cuda")
    train_ds = ImageCSVDataset(cfg.train_csv, cfg.image_root, cfg.img_size, cfg.classes, cfg.augment, cache, raw)
    val_ds = ImageCSVDataset(cfg.val_csv, cfg.image_root, cfg.img_size, cfg.classes, cache=cache, raw=raw) \
        if cfg.val_csv else None
    for ds in (train_ds, val_ds):
        if ds is not None and not ds.has_labels:
            raise UserError("training and validation CSVs need a labels column (image,labels)")
    if rt.main:
        print(f"train: {len(train_ds)} images ({cfg.train_csv}); val: {len(val_ds) if val_ds else 0} images; "
              f"{cfg.backbone} at {cfg.img_size}px, mode {cfg.mode}, device {rt.device}, {rt.world} process(es)")
    tr = Trainer(cfg, rt, resuming=resume_ckpt is not None)
    if cfg.fill == "normal" and resume_ckpt is None:
        tr.model.set_fill(fill_from_weights(cfg.weights))  # a classifier of ours keeps the fill it learnt with
        if tr.model.fill_image is None:  # every rank computes the same image
            plain = ImageCSVDataset(cfg.train_csv, cfg.image_root, cfg.img_size, cfg.classes, cache=cache)
            tr.model.set_fill(normal_mean_image(plain, workers=min(cfg.workers, 8)))
    sampler = SeededSampler(len(train_ds), rt.world, rt.rank, shuffle=True, seed=cfg.seed)
    micro_total = math.ceil(len(sampler.inner) / cfg.batch_size)
    tr.attach_schedule(math.ceil(micro_total / cfg.accum_steps))
    if resume_ckpt is not None:
        tr.load(resume_ckpt)
        if rt.main:
            print(f"resumed from {cfg.resume}: epoch {tr.epoch + 1}, batch {tr.batch_in_epoch}, step {tr.step}")
    ddp_model, wrapped_for = None, None
    val_loader = make_loader(val_ds, SeededSampler(len(val_ds), rt.world, rt.rank, shuffle=False),
                             cfg.batch_size * 2, cfg.workers, rt.device) if val_ds else None
    log_csv = cfg.log_csv or os.path.splitext(cfg.save)[0] + ".log.csv"
    tb = None
    if cfg.tensorboard and rt.main:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(cfg.tensorboard)
    train_loader = make_loader(train_ds, sampler, cfg.batch_size, cfg.workers, rt.device)
    metrics: dict = {}
    tr.last_train, tr.images_per_s = {}, 0.0
    with StopFlag() as stop:
        while tr.epoch < cfg.epochs:
            t_epoch = time.perf_counter()
            sampler.set_epoch(tr.epoch, start=tr.batch_in_epoch * cfg.batch_size)
            if tr.phase(tr.epoch) != wrapped_for:
                wrapped_for = tr.phase(tr.epoch)
                ddp_model = wrap(tr, wrapped_for)
            finished = train_one_epoch(tr, ddp_model, train_loader, micro_total, stop)
            if not finished:
                tr.save(cfg.save)
                if rt.main:
                    print(f"stopped at epoch {tr.epoch + 1}, step {tr.step}; checkpoint {cfg.save} "
                          "(continue with --resume)")
                break
            metrics = evaluate(tr.model, val_loader, tr) if val_loader else {}
            tr.epoch, tr.batch_in_epoch = tr.epoch + 1, 0
            row = {"epoch": tr.epoch, "step": tr.step, "lr": max(tr.scheduler.get_last_lr()),
                   "seconds": round(time.perf_counter() - t_epoch, 2), "images_per_s": round(tr.images_per_s, 2),
                   **{f"train_{k}": v for k, v in tr.last_train.items()},
                   **{k: v for k, v in metrics.items() if k != "auroc"},
                   **{f"auroc_{c}": v for c, v in metrics.get("auroc", {}).items()}}
            tr.history.append({k: v for k, v in row.items() if v is not None})
            # A classifier-stage epoch has an untrained mask: never the "best" model to use.
            improved = metrics.get("val_mean_auroc") is not None and tr.phase(tr.epoch - 1) != "classifier" and (
                tr.best is None or metrics["val_mean_auroc"] >= tr.best)
            if improved:
                tr.best = metrics["val_mean_auroc"]
            tr.boundary_rng = rng_state()
            if improved:  # best first: a crash between the two writes never loses the best model
                tr.save(best_path(cfg.save))
            tr.save(cfg.save)
            if rt.main:
                append_log(log_csv, row, cfg.classes)
                if tb:
                    for k, v in row.items():
                        if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                            tb.add_scalar(k, v, tr.step)
                auc, kept = metrics.get("val_mean_auroc"), metrics.get("kept_fraction")
                print(f"epoch {tr.epoch}: train loss {tr.last_train.get('loss', float('nan')):.4f}, "
                      f"val loss {metrics.get('val_loss', float('nan')):.4f}, val mean AUROC "
                      f"{'n/a' if auc is None else f'{auc:.4f}'}, kept {'n/a' if kept is None else f'{kept:.4f}'}")
    if tb:
        tb.close()
    if rt.main:
        print(f"checkpoint: {cfg.save}")
    return {"metrics": metrics, "checkpoint": cfg.save, "best": str(best_path(cfg.save)),
            "epoch": tr.epoch, "step": tr.step, "model": tr.model}
