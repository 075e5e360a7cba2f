"""Training: `fit(cfg)` runs the stages of the config one after the other, each its own loop with its
own optimizer, schedule, `train_one_epoch` and `evaluate` (classifier_stage, mask_stage, reference),
saves a resumable checkpoint after every epoch, and runs the same code on CPU, one GPU, or many GPUs
under torchrun (DDP).

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
import csv
import io
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from roi_consistency import classifier_stage, mask_stage, reference
from roi_consistency.atomic import write_text
from roi_consistency.cache import ImageCache
from roi_consistency.checkpoint import (
    FORMAT,
    best_path,
    checkpoint_config,
    load_checkpoint,
    rng_state,
    safe_load,
    save_checkpoint,
    set_rng_state,
)
from roi_consistency.config import GROUP_OF, PRESETS, THRESHOLD_RULES, TrainConfig
from roi_consistency.data import ImageCSVDataset, SeededSampler, normal_mean_image
from roi_consistency.errors import UserError
from roi_consistency.lock import RunLock
from roi_consistency.loop import LoopSettings, Position, make_loader, make_scheduler
from roi_consistency.losses import TERMS
from roi_consistency.model import MASK_NETS, ROIModel, build_model, mask_net_name
from roi_consistency.runtime import Runtime, StopFlag, environment, setup_runtime, workers_reaped_on_error

STAGES = {"classifier": classifier_stage, "mask": mask_stage, "joint": reference}
# Which validation figure makes an epoch of the final stage the best one, and whether higher is better: the
# mask stage's own objective (its AUROC is the frozen classifier's), else mean AUROC.
BEST = {"classifier": ("val_mean_auroc", True), "joint": ("val_mean_auroc", True), "mask": ("val_loss", False)}



def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_config(cli: TrainConfig, ckpt: dict, given: set[str], path: str) -> TrainConfig:
    """The resumed run's config: model, method and optimisation from the checkpoint; the run and data groups
    from the command line where it gives them, else the checkpoint's (the data may have moved; the epoch
    counts may grow). Given flags that this ignores are named in one warning."""
    if ckpt["format"] != FORMAT:
        raise UserError(f"--resume {path}: written by an earlier version ({ckpt['format']}); it still loads for "
                        "infer, evaluate and --weights, but cannot be resumed. Start a new run, e.g. with "
                        f"--weights {path} to begin from its classifier")
    saved = checkpoint_config(ckpt, path)
    from_cli = {k for k in given if GROUP_OF[k] in ("data", "run")}
    if "preset" in given:  # a preset given again sets its run settings (epoch counts, workers) as flags would
        from_cli |= {k for k in PRESETS[cli.run.preset] if GROUP_OF[k] in ("data", "run")}
    from_cli.discard("preset")  # the checkpoint keeps the name of the preset it was trained with
    keep = {k: getattr(getattr(cli, GROUP_OF[k]), k) for k in from_cli}
    keep.setdefault("save", cli.run.resume)  # without --save, a resumed run writes where it resumed from
    ignored = [f"{flag(k)} {getattr(getattr(cli, g), k)} (checkpoint: {getattr(getattr(saved, g), k)})"
               for k in sorted(given) for g in [GROUP_OF[k]]
               if g not in ("data", "run") and getattr(getattr(cli, g), k) != getattr(getattr(saved, g), k)]
    if "preset" in given and cli.run.preset != saved.run.preset:
        ignored.append(f"--preset {cli.run.preset}'s other settings (checkpoint: {saved.run.preset})")
    if ignored and int(os.environ.get("RANK", "0")) == 0:
        print("warning: --resume continues the checkpoint's model, method and optimisation settings; ignored: "
              + ", ".join(ignored), file=sys.stderr)
    # --max-steps and --resume say where this invocation stops and starts: never inherited
    return saved.replace(**{**keep, "max_steps": cli.run.max_steps, "resume": cli.run.resume})


def given_by_defaults(cfg: TrainConfig) -> set[str]:
    """For callers without a command line: the settings that differ from the defaults count as given."""
    default = TrainConfig()
    return {k for k, g in GROUP_OF.items() if getattr(getattr(cfg, g), k) != getattr(getattr(default, g), k)}


def check_config(cfg: TrainConfig, given: set[str]) -> None:
    """Refuse settings that would crash mid-run or silently do nothing, naming the flag."""
    m, o, r = cfg.method, cfg.optim, cfg.run
    if not 0 < m.keep_ratio < 1:
        raise UserError(f"--keep-ratio must be between 0 and 1, got {m.keep_ratio}")
    for name, value in (("accum_steps", o.accum_steps), ("batch_size", o.batch_size), ("log_every", r.log_every),
                        ("img_size", cfg.model.img_size)):
        if value < 1:
            raise UserError(f"{flag(name)} must be at least 1, got {value}")
    if o.img_size_start and o.img_size_start < 32:
        raise UserError(f"--img-size-start must be at least 32, got {o.img_size_start}; 0 turns progressive "
                        "resizing off")
    if m.ablated and getattr(m, m.ablated) == 0:
        raise UserError(f"--mode {m.mode} changes nothing: the {m.ablated} weight is already 0 here (the ablations "
                        "are the reference's, --preset seed)")
    if not (0 <= m.evalx_weight <= 1 and 0 < m.evalx_min_keep <= classifier_stage.MAX_KEEP):
        raise UserError(f"the EVAL-X share ({m.evalx_weight}) must be in [0, 1] and its smallest kept share "
                        f"({m.evalx_min_keep}) in (0, {classifier_stage.MAX_KEEP}]")
    if not 0 < m.min_keep_ratio <= m.keep_ratio:
        raise UserError(f"the mask stage's smallest keep ratio must be in (0, --keep-ratio={m.keep_ratio}], "
                        f"got {m.min_keep_ratio}")
    if m.threshold_rule not in THRESHOLD_RULES:
        raise UserError(f"threshold_rule {m.threshold_rule}: choose from {', '.join(THRESHOLD_RULES)}")
    if m.joint:
        _check_joint(cfg, given)
    else:
        _check_two_stage(cfg)


def _check_joint(cfg: TrainConfig, given: set[str]) -> None:
    if "mask_epochs" in given:
        raise UserError("--mask-epochs: joint training (--preset seed, or --mode standard/random_mask) has no mask "
                        "stage; every term trains from the first step for --epochs")
    if cfg.run.epochs < 1:
        raise UserError(f"--epochs must be at least 1 for joint training, got {cfg.run.epochs}")


def _check_two_stage(cfg: TrainConfig) -> None:
    e, me = cfg.run.epochs, cfg.run.mask_epochs
    if e < 0 or me < 0 or e + me == 0:
        raise UserError(f"--epochs ({e}) and --mask-epochs ({me}) must be 0 or more, and not both 0")
    if e == 0 and not cfg.model.weights:
        raise UserError("--epochs 0 trains only the mask, against a classifier that must come from --weights "
                        "(a checkpoint of this tool)")
    if me and not any(cfg.method.loss_weights().values()):
        raise UserError("every mask term has weight 0 (--mode), so the mask stage would have nothing to learn")


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


def init_model(cfg: TrainConfig, rt: Runtime, data: TrainData, ckpt: dict | None) -> ROIModel:
    """The model with its weights (a checkpoint's, or fresh) and its fill, on the device, channels-last."""
    torch.manual_seed(cfg.optim.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, cfg.method, len(cfg.data.classes), load_pretrained=ckpt is None)
    torch.manual_seed(cfg.optim.seed + rt.rank)  # but independent drop-path and random-mask noise per rank
    if ckpt is not None:
        model.backbone.load_state_dict(ckpt["backbone"])
        model.mask_net.load_state_dict(ckpt["mask_net"])
        model.set_fill(ckpt.get("fill_image"))
    elif cfg.method.fill == "normal":
        model.set_fill(fill_from_weights(cfg.model.weights))  # a classifier of ours keeps the fill it learnt with
        if model.fill_image is None:  # every rank computes the same image
            model.set_fill(normal_mean_image(data.train.plain(), workers=min(cfg.run.workers, 8)))
    return model.to(rt.device, memory_format=torch.channels_last)


def fill_from_weights(path: str | None) -> torch.Tensor | None:
    """The fill image stored in a checkpoint of this tool given as --weights (None otherwise)."""
    if not path:
        return None
    ck = safe_load(Path(path), "--weights")
    return ck.get("fill_image") if isinstance(ck, dict) else None


@dataclass
class RunState:
    """What a checkpoint records beside the weights: each stage's position and optimizer, the epoch log."""
    stage: str | None = None
    progress: dict[str, Position] = field(default_factory=dict)
    optim: dict[str, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    thresholds: dict | None = None  # the operating points of the weights at step thresholds["step"]

    @property
    def step(self) -> int:
        return sum(p.step for p in self.progress.values())

    @classmethod
    def from_checkpoint(cls, ck: dict, rng: dict) -> "RunState":
        progress = {s: Position(**p, rng=rng) for s, p in ck["progress"].items()}
        return cls(ck["stage"], progress, dict(ck["optim"]), list(ck["history"]), ck["best"], ck.get("thresholds"))

    def restart(self, stage: str) -> None:
        """Forget a stage's progress (its model changed under it)."""
        self.progress.pop(stage, None)
        self.optim.pop(stage, None)
        self.thresholds = None  # the step count goes back: a step would match weights they were not chosen for
        if self.best and self.best["stage"] == stage:
            self.best = None


def checkpoint(model: ROIModel, cfg: TrainConfig, state: RunState, pos: Position) -> dict:
    return {"config": cfg.to_dict(), "classes": list(cfg.data.classes), "backbone": model.backbone.state_dict(),
            "mask_net": model.mask_net.state_dict(),
            "fill_image": None if model.fill_image is None else model.fill_image.cpu(), "stage": state.stage,
            "progress": {s: p.as_dict() for s, p in state.progress.items()}, "optim": state.optim,
            "step": state.step, "rng": pos.rng, "history": state.history, "best": state.best,
            # only with the weights they were chosen for: a checkpoint taken mid-epoch has none
            "thresholds": state.thresholds if state.thresholds and state.thresholds["step"] == state.step else None}


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


LOG_COLUMNS = (["stage", "epoch", "step", "lr", "seconds", "images_per_s", "train_loss"]
               + [f"train_{k}" for k in TERMS] + ["val_loss"] + [f"val_{k}" for k in TERMS]
               + ["val_mean_auroc", "kept_fraction"])


def write_log(path: str, history: list[dict], classes: list[str]) -> None:
    """The per-epoch log as one CSV, rewritten whole (atomically) after each epoch, so it matches the
    checkpoint it sits beside, resumes included."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS + [f"auroc_{c}" for c in classes], extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    write_text(path, buf.getvalue())


def epoch_row(stage: str, pos: Position, step: int, lr: float, seconds: float, train: dict, val: dict) -> dict:
    row = {"stage": stage, "epoch": pos.epoch, "step": step, "lr": lr, "seconds": round(seconds, 2),
           "images_per_s": round(train["images_per_s"], 2), **{f"train_{k}": v for k, v in train["terms"].items()},
           **{k: v for k, v in val.items() if k not in ("auroc", "thresholds")},
           **{f"auroc_{c}": v for c, v in val.get("auroc", {}).items()}}
    return {k: v for k, v in row.items() if v is not None}


def report_epoch(row: dict, epochs: int) -> str:
    def f(k: str) -> str:
        return "n/a" if row.get(k) is None else f"{row[k]:.4f}"
    kept = f", kept {f('kept_fraction')}" if "kept_fraction" in row else ""
    return (f"{row['stage']} epoch {row['epoch']}/{epochs}: train loss {f('train_loss')}, val loss {f('val_loss')}, "
            f"val mean AUROC {f('val_mean_auroc')}{kept}")


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


def rank_rng(ckpt: dict, rt: Runtime) -> dict:
    """This rank's RNG state at the checkpoint (rank 0's for a checkpoint of another world size)."""
    per_rank = ckpt.get("rng_per_rank")
    return per_rank[rt.rank] if per_rank and len(per_rank) == rt.world else ckpt["rng"]


def run_stage(s: Session, name: str, epochs: int) -> dict:
    """Epochs of one stage, from where the run state says it is: its optimizer and schedule, then per epoch
    its train_one_epoch and evaluate, the log, and the best and latest checkpoints."""
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
        metrics = stage.evaluate(s.model, s.data.val_loader, rt, cfg) if s.data.val_loader else {}
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
    key, higher = BEST[name]
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
        ckpt = load_checkpoint(cfg.run.resume)
        cfg = resume_config(cfg, ckpt, given, cfg.run.resume)
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

