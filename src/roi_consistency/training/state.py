"""What a training run records beside the weights, and writes after every epoch: each stage's position
and optimizer, the RNG state at the last step boundary, the epoch log, the best epoch, and the operating
points; the checkpoint's dict of them (files/checkpoint.py's layout) and the log CSV beside it.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import torch

from roi_consistency.files.atomic import write_text
from roi_consistency.model.config import TrainConfig
from roi_consistency.model.network import ROIModel
from roi_consistency.runtime import Runtime
from roi_consistency.training.losses import TERMS


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_rng(ckpt: dict, rt: Runtime) -> dict:
    """This rank's RNG state at the checkpoint (rank 0's for a checkpoint of another world size)."""
    per_rank = ckpt.get("rng_per_rank")
    return per_rank[rt.rank] if per_rank and len(per_rank) == rt.world else ckpt["rng"]


@dataclass
class Position:
    """Where a stage is: epochs finished, micro-batches done in the current epoch, optimizer steps, and
    the RNG state at the last step boundary (what a checkpoint taken now must restore)."""
    epoch: int = 0
    batch: int = 0
    step: int = 0
    rng: dict = field(default_factory=rng_state)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step}


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
