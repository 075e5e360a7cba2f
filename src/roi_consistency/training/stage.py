"""What a training stage provides. `train.fit` runs the config's stages in order (the method: classifier,
then mask; the reference: joint), each as a module that satisfies `Stage`:

    classifier.py  stage 1 of the method: the classifier, on full and randomly masked images (EVAL-X)
    mask.py        stage 2: the mask network against the frozen classifier
    joint.py       the reference (`--preset seed`): both together, every term from the first step

`train.run_stage` builds the stage's optimizer from `param_groups`, wraps `Forward(model, cfg)` for DDP
and torch.compile, calls `train_one_epoch` and then `validate` once per epoch, and keeps the epoch
whose `BEST` figure is best as *.best.pt.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Stage(Protocol):
    # (the key of validate's metrics that picks the best epoch, whether higher is better)
    BEST: tuple[str, bool]
    # the training forward DDP wraps, built as Forward(model, cfg); its trainable parameters are exactly
    # those of param_groups
    Forward: type[nn.Module]

    def param_groups(self, model: nn.Module, cfg) -> list[dict]:
        """Switch requires_grad for the stage and return the optimizer's parameter groups."""

    def train_one_epoch(self, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler, loader, pos, loop,
                        cfg, size: int, n_batches: int, desc: str) -> dict:
        """One epoch, or the rest of one from pos.batch, at input size `size`: loop.run_epoch's result
        ({"terms", "images_per_s", "stopped"})."""

    def validate(self, model: nn.Module, loader, rt, cfg) -> dict:
        """The stage's own objective and the full image's AUROC on the validation set:
        loop.Validation.metrics's row (val_loss, val_<term>, val_mean_auroc, auroc, n_val, thresholds)."""
