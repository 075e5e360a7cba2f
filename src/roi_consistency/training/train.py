"""Training: `fit(cfg)` runs the stages of the config one after the other (stage.py: classifier then mask,
or joint), each its own loop with its own optimizer, schedule, `train_one_epoch` and `validate`, saves a
resumable checkpoint after every epoch, and runs the same code on CPU, one GPU, or many GPUs under
torchrun (DDP).

    roi-consistency train --train-csv nih_roi_train.csv --val-csv nih_roi_val.csv --image-root images
    torchrun --nproc_per_node=8 -m roi_consistency train …

Resuming is exact and can start anywhere in either stage: the sampler can start part-way through an
epoch, augmentation is seeded per sample, and checkpoints are only taken at optimizer-step boundaries
together with the RNG state at that boundary. So an interrupted-then-resumed CPU run ends with the
same weights as a straight one. A resume that adds classifier epochs to a finished run trains the mask
stage again, against the changed classifier (the mask reads its features).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from roi_consistency.data.dataset import ImageCSVDataset, SeededSampler, normal_mean_image
from roi_consistency.data.images import ImageCache
from roi_consistency.data.labels import FINDINGS
from roi_consistency.errors import UserError
from roi_consistency.files.checkpoint import best_path, read_checkpoint, save_checkpoint
from roi_consistency.files.lock import RunLock
from roi_consistency.model.config import TrainConfig
from roi_consistency.model.mask_nets import MASK_NETS, mask_net_name
from roi_consistency.model.network import ROIModel, build_model
from roi_consistency.model.trained import load_weights, read_weights
from roi_consistency.runtime import Runtime, StopFlag, environment, setup_runtime, workers_reaped_on_error
from roi_consistency.training import classifier, joint, mask
from roi_consistency.training.loop import LoopSettings, make_loader, make_scheduler
from roi_consistency.training.settings import check_config, given_by_defaults, resume_config, with_classes
from roi_consistency.training.stage import Stage
from roi_consistency.training.state import (
    Position,
    RunState,
    checkpoint,
    epoch_row,
    rank_rng,
    report_epoch,
    rng_state,
    set_rng_state,
    write_log,
)

STAGES: dict[str, Stage] = {"classifier": classifier, "mask": mask, "joint": joint}


@dataclass
class TrainData:
    train: ImageCSVDataset
    val: ImageCSVDataset | None
    sampler: SeededSampler
    train_loader: object
    val_loader: object
    n_batches: int  # micro-batches per epoch on each rank


def augment_on_device(device: torch.device) -> bool:
    """Resize and augment whole batches of raw cached rows on a GPU (a quarter of the bytes to copy, no
    per-image resampling in the loader); on a CPU the loader workers do it in parallel, which is faster."""
    return device.type == "cuda"


def build_data(cfg: TrainConfig, rt: Runtime) -> TrainData:
    d, size = cfg.data, cfg.model.img_size
    cache = ImageCache(d.cache, size) if d.cache else None
    raw = cache is not None and augment_on_device(rt.device)
    train = ImageCSVDataset(d.train_csv, d.image_root, size, d.classes, d.augment, cache, raw)
    val = ImageCSVDataset(d.val_csv, d.image_root, size, d.classes, cache=cache, raw=raw) if d.val_csv else None
    if train.match and train.match.unlabelled:
        raise UserError(f"{d.train_csv} never names {', '.join(train.match.unlabelled)}, which --classes asks the "
                        "model to learn; give the CSV's own names")
    for ds in (train, val):
        if ds is not None and not ds.has_labels:
            raise UserError(f"{ds.csv_path}: training and validation CSVs need a labels column (image,labels)")
        if ds is not None:
            ds.drop_bad(d.skip_bad_images, progress=rt.main)
            ds.replace_bad = True
    sampler = SeededSampler(len(train), rt.world, rt.rank, shuffle=True, seed=cfg.optim.seed)
    bs, workers = cfg.optim.batch_size, cfg.run.workers
    val_loader = make_loader(val, SeededSampler(len(val), rt.world, rt.rank, shuffle=False), bs * 2, workers,
                             rt.device) if val else None
    return TrainData(train, val, sampler, make_loader(train, sampler, bs, workers, rt.device), val_loader,
                     math.ceil(len(sampler.inner) / bs))


def findings_line(classes: list[str], labels) -> str:
    """What the model learns: its findings, and those without a positive training film or with unknowns."""
    pos, unknown = (labels > 0.5).sum(0), np.isnan(labels).sum(0)
    nih = " (NIH's 14)" if classes == list(FINDINGS) else f": {', '.join(classes)}"
    parts = [f"findings: {len(classes)}{nih}"]
    if (pos == 0).any():
        parts.append(f"without a positive training film: {', '.join(c for c, k in zip(classes, pos) if k == 0)}")
    if unknown.any():
        parts.append("unknown on " + ", ".join(f"{c} {k:,}" for c, k in zip(classes, unknown) if k) + " film(s)")
    return "; ".join(parts)


def init_model(cfg: TrainConfig, rt: Runtime, data: TrainData, ckpt: dict | None) -> ROIModel:
    """The model with its weights (a checkpoint's, or fresh: --weights, ImageNet's or random) and its fill,
    on the device, channels-last."""
    weights = read_weights(cfg.model.weights) if ckpt is None and cfg.model.weights else None
    if weights is not None and cfg.run.epochs == 0 and weights.classes not in (None, cfg.data.classes):
        raise UserError(f"--epochs 0 trains only the mask, against the classifier in --weights, which scores "
                        f"{', '.join(weights.classes)}; give those as --classes, or train the classifier too")
    weights = weights.for_classes(cfg.data.classes, f"--weights {cfg.model.weights}") if weights else None
    torch.manual_seed(cfg.optim.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, cfg.method, len(cfg.data.classes), weights.backbone if weights else None,
                        download=ckpt is None and cfg.model.pretrained)
    torch.manual_seed(cfg.optim.seed + rt.rank)  # but independent drop-path and random-mask noise per rank
    if ckpt is not None:
        load_weights(model, ckpt, cfg.run.resume)
    elif cfg.method.fill == "normal":
        model.set_fill(weights.fill_image if weights else None)  # a classifier of ours keeps the fill it learnt with
        if model.fill_image is None:  # every rank computes the same image
            model.set_fill(normal_mean_image(data.train.plain(), workers=min(cfg.run.workers, 8)))
    return model.to(rt.device, memory_format=torch.channels_last)


def input_size(cfg: TrainConfig, stage: str, epoch: int, epochs: int) -> int:
    """The training input size of an epoch. With --img-size-start the classifier's epochs (stage 1, or
    joint training) grow it linearly, in steps of 8 px, to --img-size by their last epoch: early epochs
    learn the coarse findings at a fraction of the cost. The mask stage always sees --img-size."""
    size = cfg.model.img_size
    start = min(cfg.optim.img_size_start or size, size)  # a preset's start above --img-size: no ramp
    if stage == "mask" or epoch >= epochs - 1:
        return size
    return int(round((start + (size - start) * epoch / (epochs - 1)) / 8) * 8)


def wrap(forward: torch.nn.Module, rt: Runtime, compile_: bool) -> torch.nn.Module:
    """A stage's training forward as the loop calls it: DDP registers exactly its trainable parameters."""
    net = DDP(forward, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None) if rt.ddp else forward
    return torch.compile(net) if compile_ else net  # checkpoints still come from the plain model


@dataclass
class Session:
    """What every stage of one fit shares."""
    cfg: TrainConfig
    rt: Runtime
    model: ROIModel
    data: TrainData
    state: RunState
    stop: StopFlag
    final: str  # the stage whose epochs compete for the best checkpoint
    tb: object = None

    def save(self, pos: Position, path: str | None = None) -> None:
        """A checkpoint of the current position (called on every rank: each contributes its RNG state)."""
        rngs = [pos.rng]
        if self.rt.ddp:
            rngs = [None] * self.rt.world
            dist.all_gather_object(rngs, pos.rng)
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):  # never save a poisoned model
            raise UserError(f"the weights are no longer finite at step {self.state.step}: stopped without saving; "
                            f"{self.cfg.run.save} is from before. Lower --lr, or check the data")
        if self.rt.main:
            save_checkpoint({**checkpoint(self.model, self.cfg, self.state, pos), "rng_per_rank": rngs,
                             "environment": environment(self.rt.device, self.rt.world)}, path or self.cfg.run.save)


def run_stage(s: Session, name: str, epochs: int) -> dict:
    """Epochs of one stage, from where the run state says it is: its optimizer and schedule, then per epoch
    its train_one_epoch and validate, the log, and the best and latest checkpoints."""
    stage, cfg, rt = STAGES[name], s.cfg, s.rt
    pos = s.state.progress.setdefault(name, Position())
    s.state.stage = name
    optimizer = torch.optim.AdamW(stage.param_groups(s.model, cfg), lr=cfg.optim.lr,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = make_scheduler(optimizer, math.ceil(s.data.n_batches / cfg.optim.accum_steps) * epochs,
                               cfg.optim.warmup_frac)
    if name in s.state.optim:
        optimizer.load_state_dict(s.state.optim[name]["optimizer"])
        scheduler.load_state_dict(s.state.optim[name]["scheduler"])
    net = wrap(stage.Forward(s.model, cfg), rt, cfg.run.compile)

    def save(path: str | None = None) -> None:
        s.state.optim[name] = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        s.save(pos, path)

    stop_at = None if cfg.run.max_steps is None else cfg.run.max_steps - (s.state.step - pos.step)
    loop = LoopSettings(rt, cfg.optim.accum_steps, cfg.run.log_every, s.stop, stop_at, cfg.run.save_every, save)
    first_step, metrics = pos.step, {}
    while pos.epoch < epochs:
        t0, size = time.perf_counter(), input_size(cfg, name, pos.epoch, epochs)
        # data order and augmentation by the epoch's place in the whole run: the mask stage's follow the classifier's
        first_epoch = cfg.run.epochs if name == "mask" else 0
        s.data.sampler.set_epoch(first_epoch + pos.epoch, start=pos.batch * cfg.optim.batch_size)
        train = stage.train_one_epoch(net, optimizer, scheduler, s.data.train_loader, pos, loop, cfg, size,
                                      s.data.n_batches, f"{name} epoch {pos.epoch + 1}/{epochs} ({size}px)")
        if train["stopped"]:
            save()
            if rt.main:
                print(f"stopped at {name} epoch {pos.epoch + 1}, step {s.state.step}; checkpoint {cfg.run.save} "
                      "(continue with --resume)")
            return {"stopped": True, "steps": pos.step - first_step, "metrics": metrics}
        metrics = stage.validate(s.model, s.data.val_loader, rt, cfg) if s.data.val_loader else {}
        if metrics:
            s.state.thresholds = {"rule": cfg.method.threshold_rule, "values": metrics["thresholds"],
                                  "csv": str(Path(cfg.data.val_csv).resolve()), "n_images": metrics["n_val"],
                                  "step": s.state.step}
        pos.epoch, pos.batch, pos.rng = pos.epoch + 1, 0, rng_state()
        end_epoch(s, name, epochs, pos, epoch_row(name, pos, s.state.step, scheduler.get_last_lr()[0],
                                                  time.perf_counter() - t0, train, metrics), save)
    return {"stopped": False, "steps": pos.step - first_step, "metrics": metrics}


def end_epoch(s: Session, name: str, epochs: int, pos: Position, row: dict, save) -> None:
    """Log the epoch, then save: the best first, so a crash between the two writes never loses it."""
    s.state.history.append(row)
    key, higher = STAGES[name].BEST
    value, best = row.get(key), s.state.best
    if best is not None and best["stage"] != name:  # a best of another stage (a run extended) is not comparable
        best = None
    if name == s.final and value is not None and (
            best is None or (value >= best["value"] if higher else value <= best["value"])):
        s.state.best = {"stage": name, "key": key, "value": value}
        save(str(best_path(s.cfg.run.save)))
    save()
    if s.rt.main:
        write_log(os.path.splitext(s.cfg.run.save)[0] + ".log.csv", s.state.history, s.cfg.data.classes)
        if s.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    s.tb.add_scalar(f"{name}/{k}", v, row["step"])
        print(report_epoch(row, epochs))


def start(cfg: TrainConfig, given: set[str] | None) -> tuple[TrainConfig, Runtime, dict | None]:
    """The runtime, and the config to run: a resumed one from its checkpoint, checked."""
    given = given_by_defaults(cfg) if given is None else set(given)
    rt = setup_runtime(cfg.run.device, cfg.run.bf16)
    ckpt = None
    if cfg.run.resume:
        if Path(cfg.run.resume).is_dir():
            raise UserError(f"--resume {cfg.run.resume} is an exported folder, which keeps no optimizer or position "
                            f"to resume; start a new run from its classifier with --weights {cfg.run.resume}")
        ckpt = read_checkpoint(cfg.run.resume, "--resume")
        cfg = resume_config(cfg, ckpt, given, cfg.run.resume)
    cfg = with_classes(cfg)
    check_config(cfg, given)
    return cfg, rt, ckpt


def fit(cfg: TrainConfig, given: set[str] | None = None) -> dict:
    """Train according to cfg: its stages in order, resuming where a --resume checkpoint stopped. `given`
    names the settings set on the command line (None: those that differ from the defaults).
    Returns the last stage's validation metrics, the global step, the checkpoint paths and the model."""
    cfg, rt, ckpt = start(cfg, given)
    with RunLock(cfg.run.save) if rt.main else contextlib.nullcontext(), workers_reaped_on_error():
        return train_run(cfg, rt, ckpt)  # one run per checkpoint path: the lock


def train_run(cfg: TrainConfig, rt: Runtime, ckpt: dict | None) -> dict:
    data = build_data(cfg, rt)
    if rt.main:
        print(f"train: {len(data.train)} images ({cfg.data.train_csv}); val: {len(data.val) if data.val else 0} "
              f"images; {cfg.model.backbone} at {cfg.model.img_size}px, stages "
              f"{', '.join(f'{n} {e} epoch(s)' for n, e in cfg.stages() if e)}, device {rt.device}, "
              f"{rt.world} process(es)")
        print(findings_line(cfg.data.classes, data.train.labels))
    model = init_model(cfg, rt, data, ckpt)
    state = RunState.from_checkpoint(ckpt, rank_rng(ckpt, rt)) if ckpt else RunState()
    if ckpt:
        set_rng_state(rank_rng(ckpt, rt))
        if rt.main:
            print(f"resumed from {cfg.run.resume}: {state.stage} stage, step {state.step}")
    planned = [(n, e) for n, e in cfg.stages() if e > 0]
    tb = None
    if cfg.run.tensorboard and rt.main:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(cfg.run.tensorboard)
    s = Session(cfg, rt, model, data, state, None, planned[-1][0], tb)
    results = run_stages(s, planned)
    if tb:
        tb.close()
    if rt.main:
        print(f"checkpoint: {cfg.run.save}")
    last = results[-1] if results else {"metrics": {}}
    return {"metrics": last["metrics"], "stages": {n: p.as_dict() for n, p in state.progress.items()},
            "step": state.step, "checkpoint": cfg.run.save, "best": str(best_path(cfg.run.save)), "model": model,
            "signal": s.stop.signum if s.stop is not None else None}


def run_stages(s: Session, planned: list[tuple[str, int]]) -> list[dict]:
    """Each planned stage in turn; a classifier that trains again (more --epochs on a finished run) first
    invalidates the mask stage, which then starts over against the changed classifier."""
    results = []
    with StopFlag() as stop:
        s.stop = stop
        for name, epochs in planned:
            if name in s.state.progress and s.state.progress[name].epoch >= epochs:
                continue  # finished before this resume
            if name == "classifier" and "mask" in s.state.progress:
                s.state.restart("mask")  # the mask reads the classifier's features: it trains again after
                reset_mask_net(s)
            res = run_stage(s, name, epochs)
            results.append(res)
            if res["stopped"]:
                break
    return results


def reset_mask_net(s: Session) -> None:
    """A fresh mask network (seeded, the same on every rank) for a mask stage that starts over."""
    torch.manual_seed(s.cfg.optim.seed)
    net = MASK_NETS[mask_net_name(s.cfg.method)](s.model.backbone, len(s.cfg.data.classes))
    s.model.mask_net = net.to(s.rt.device, memory_format=torch.channels_last)
    torch.manual_seed(s.cfg.optim.seed + s.rt.rank)
