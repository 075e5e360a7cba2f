"""A trained model back from disk: the one way every caller restores one (infer, evaluate, calibrate,
export, the API, train's --resume and --weights, the tests and the benchmarks).

    state = read_state("ck.best.pt")          # a checkpoint, or a folder written by `export`
    model, cfg = restore(state, "ck.best.pt", device)
    model, cfg = load_trained("ck.best.pt", device)   # the two together

Both kinds of file come back as a checkpoint's state (files/checkpoint.py's layout), so one function
builds the model from either: classes, image size, keep ratio and fill always come from there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from roi_consistency.errors import UserError
from roi_consistency.files.checkpoint import read_checkpoint, safe_load
from roi_consistency.model.config import TrainConfig
from roi_consistency.model.exported import read_folder
from roi_consistency.model.network import ROIModel, build_model


def read_state(path: str | Path, what: str = "checkpoint") -> dict:
    """A checkpoint file, or an exported folder, as a checkpoint's state."""
    if Path(path).is_dir():
        return read_folder(path)
    return read_checkpoint(path, what)


def checkpoint_config(state: dict, path: str | Path) -> TrainConfig:
    """The config a state was trained with, or a UserError naming the file."""
    try:
        cfg = TrainConfig.from_dict(state["config"])
        if cfg.data.classes is None:
            raise UserError("its training config names no findings (data.classes)")
        return cfg
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{path}: its training config is missing or malformed; it was not written by this "
                        "version of roi-consistency") from None


def load_weights(model: ROIModel, state: dict, path: str | Path) -> None:
    """The state's classifier, mask network and fill into `model`, built from the same config."""
    for part in ("backbone", "mask_net"):
        try:
            getattr(model, part).load_state_dict(state[part])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise UserError(f"{path}: its {part} weights do not fit the model its config describes "
                            f"({str(exc).splitlines()[0][:160]})") from None
    model.set_fill(state.get("fill_image"))


def stored_thresholds(t, classes: list[str], path: str | Path) -> dict | None:
    """The operating points a checkpoint stores, {"rule", "values": {finding: p or None}}, checked: a
    file edited by hand fails here, naming itself, not in the middle of scoring."""
    if t is None:
        return None
    values = t.get("values") if isinstance(t, dict) else None
    if not isinstance(values, dict) or not all(
            values.get(c) is None or (isinstance(values[c], (int, float)) and not isinstance(values[c], bool))
            for c in classes):
        raise UserError(f"{path}: its thresholds are malformed (expected a number or null per finding): the file "
                        "was edited or damaged; use the checkpoint `train` wrote, or export it again")
    return t


def restore(state: dict, path: str | Path, device: torch.device | str = "cpu") -> tuple[ROIModel, TrainConfig]:
    """(the model in eval mode on `device`, channels-last, with its thresholds and where it was trained; its
    config) from a state read from `path`."""
    cfg = checkpoint_config(state, path)
    model = build_model(cfg.model, cfg.method, len(cfg.data.classes))
    load_weights(model, state, path)
    model.thresholds = stored_thresholds(state.get("thresholds"), cfg.data.classes, path)
    model.trained_on = state.get("environment")
    # channels-last weights make every conv run channels-last (faster on CUDA and CPU alike)
    return model.to(device, memory_format=torch.channels_last).eval(), cfg


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> tuple[ROIModel, TrainConfig]:
    """restore(read_state(path)): a checkpoint or an exported folder, ready to score."""
    return restore(read_state(path), path, device)


@dataclass
class Weights:
    """What `--weights` starts a classifier from: a backbone state dict, and the fill it was trained with
    (only a model of this tool has one)."""
    backbone: dict[str, torch.Tensor]
    fill_image: torch.Tensor | None = None
    classes: list[str] | None = None  # the findings its head scores (only a model of this tool says)

    def for_classes(self, classes: list[str], what: str) -> "Weights":
        """The weights to start a run learning `classes` from: without the head where it scored other findings
        (or the same in another order), which would otherwise load wherever the count matches."""
        if self.classes is None or self.classes == classes:
            return self
        print(f"note: {what} scored {', '.join(self.classes)}; this run learns other findings, so its head "
              "starts afresh")
        last = list(self.backbone)[-2:]  # a torchvision classifier's state dict ends with its head's Linear
        return Weights({k: v for k, v in self.backbone.items() if k not in last}, self.fill_image, classes)


def read_weights(path: str) -> Weights:
    """--weights, read once: a checkpoint or exported folder of this tool (its classifier and fill), or a
    plain state dict of a torchvision classifier."""
    what = f"--weights {path}"
    if Path(path).is_dir():
        try:
            state = read_folder(path)
        except UserError as exc:
            raise UserError(f"--weights: {exc}") from None
    else:
        state = safe_load(Path(path), "--weights")
    ours = isinstance(state, dict) and "backbone" in state
    tensors = state["backbone"] if ours else state
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise UserError(f"{what}: not a state dict of tensors, nor a checkpoint of this tool")
    return Weights(tensors, state.get("fill_image") if ours else None, saved_classes(state) if ours else None)


def saved_classes(state: dict) -> list[str] | None:
    """The findings a checkpoint or exported folder scores, as its training config says (None: unsaid)."""
    try:
        classes = state["config"]["data"]["classes"]
    except (KeyError, TypeError):
        return None
    return classes if isinstance(classes, list) and all(isinstance(c, str) for c in classes) else None
