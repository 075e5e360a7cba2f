"""Checkpoints: plain dicts of tensors, numbers, strings and lists, written atomically and loaded with
`torch.load(weights_only=True)` (no pickled classes, so loading never runs foreign code), and the one
way every stage gets a trained model back.

Layout (format roi-consistency/2):
    format, config (grouped, see config.py), classes, backbone, mask_net, fill_image,
    stage              the stage in progress, or the last one that ran: classifier | mask | joint
    progress           {stage: {"epoch": epochs finished, "batch": micro-batches into the next, "step"}}
    optim              {stage: {"optimizer", "scheduler"}} for each stage that ran
    step               optimizer steps over all stages;  rng: the RNG state at that step boundary
    history            one row per finished epoch;  best: {"stage", "key", "value"} or None
    thresholds         the per-class operating points of these weights, or None:
                       {"rule", "values": {class: p or None}, "csv", "n_images", "step"} (train, calibrate)
Format roi-consistency/1 (a flat config, one optimizer for both stages) still loads for infer, evaluate
and --weights, meaning what it meant; it cannot be resumed.
"""
from __future__ import annotations

import errno
import pickle
import zipfile
from pathlib import Path

import torch

from roi_consistency.atomic import atomic_write
from roi_consistency.config import TrainConfig
from roi_consistency.errors import UserError

FORMAT = "roi-consistency/2"
READABLE = (FORMAT, "roi-consistency/1")


def save_checkpoint(state: dict, path: str | Path) -> None:
    def write(tmp: Path) -> None:
        try:
            torch.save({"format": FORMAT, **state}, tmp)
        except RuntimeError as exc:  # torch's writer reports a full disk as a RuntimeError
            raise OSError(errno.EIO, str(exc).splitlines()[0]) from None
    atomic_write(path, write)


def safe_load(path: Path, what: str, map_location="cpu"):
    """torch.load(weights_only=True), with one-line errors: a file torch.save did not write, or one that
    holds pickled objects (refused without running any of it)."""
    if not zipfile.is_zipfile(path):
        raise UserError(f"{what} {path} is not a checkpoint: not a file torch.save writes (truncated, or another "
                        "kind of file)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{what} {path} refused: it holds pickled objects, not plain tensors, so it was not written "
                        "by this tool (nothing in it was run)") from None
    except Exception as exc:
        raise UserError(f"{what} {path} could not be read: {str(exc).splitlines()[0][:200]}") from None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    ckpt = safe_load(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE:
        raise UserError(f"{path} is not a roi-consistency checkpoint")
    return ckpt


def checkpoint_config(ckpt: dict, path: str | Path) -> TrainConfig:
    """The config a checkpoint was trained with (a flat one upgraded), or a UserError naming the file."""
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def load_trained(path: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode on `device`, its TrainConfig) from a checkpoint: classes, image size,
    normalisation, keep ratio and fill always come from there. A folder written by `export` loads too."""
    if Path(path).is_dir():
        from roi_consistency.export import load_export
        return load_export(path, device)
    return trained_from(load_checkpoint(path), path, device)


def trained_from(ckpt: dict, path: str | Path, device: torch.device | str = "cpu"):
    """load_trained for a checkpoint dict already read from `path`."""
    from roi_consistency.model import build_model
    cfg = checkpoint_config(ckpt, path)
    model = build_model(cfg.model, cfg.method, len(cfg.data.classes), load_pretrained=False)
    model.backbone.load_state_dict(ckpt["backbone"])
    model.mask_net.load_state_dict(ckpt["mask_net"])
    model.set_fill(ckpt.get("fill_image"))
    model.thresholds = ckpt.get("thresholds")
    model.trained_on = ckpt.get("environment")
    # channels-last weights make every conv run channels-last (faster on CUDA and CPU alike)
    return model.to(device, memory_format=torch.channels_last).eval(), cfg


def best_path(path: str | Path) -> Path:
    """checkpoints/x.pt -> checkpoints/x.best.pt"""
    p = Path(path)
    return p.with_name(p.stem + ".best" + p.suffix)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
