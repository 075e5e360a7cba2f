"""The checkpoint file: a plain dict of tensors, numbers, strings and lists, written atomically and read
with `torch.load(weights_only=True)` (no pickled classes, so reading never runs foreign code).

Layout (format roi-consistency/2):
    format, config (grouped, see model/config.py), classes, backbone, mask_net, fill_image,
    stage              the stage in progress, or the last one that ran: classifier | mask | joint
    progress           {stage: {"epoch": epochs finished, "batch": micro-batches into the next, "step"}}
    optim              {stage: {"optimizer", "scheduler"}} for each stage that ran
    step               optimizer steps over all stages;  rng, rng_per_rank: the RNG state at that step
    history            one row per finished epoch;  best: {"stage", "key", "value"} or None
    thresholds         the per-class operating points of these weights, or None:
                       {"rule", "values": {class: p or None}, "csv", "n_images", "step"} (train, calibrate)
    environment        where the weights were trained (runtime.environment)
model/trained.py turns one back into a model.
"""
from __future__ import annotations

import errno
import pickle
import zipfile
from pathlib import Path

import torch

from roi_consistency.errors import UserError
from roi_consistency.files.atomic import atomic_write

FORMAT = "roi-consistency/2"
# Format roi-consistency/1 (a flat config) is no longer read; this commit is the last that reads it.
LAST_READS_V1 = "346600b"


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
    if not path.is_file():
        raise UserError(f"{what} {path}: file not found")
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


def read_checkpoint(path: str | Path, what: str = "checkpoint", map_location="cpu") -> dict:
    """A checkpoint of this format as its dict, or a UserError naming the file."""
    path = Path(path)
    ckpt = safe_load(path, what, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        version = ckpt.get("format") if isinstance(ckpt, dict) else None
        if version == "roi-consistency/1":
            raise UserError(f"{what} {path} was written by an earlier version (format roi-consistency/1); read it "
                            f"with roi-consistency at commit {LAST_READS_V1}, or start a new run from its classifier "
                            f"with --weights {path}")
        raise UserError(f"{what} {path} is not a roi-consistency checkpoint")
    return ckpt


def stamp(path: str | Path) -> dict:
    """The file's size and modification time: a checkpoint written again since has another."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def best_path(path: str | Path) -> Path:
    """checkpoints/x.pt -> checkpoints/x.best.pt"""
    p = Path(path)
    return p.with_name(p.stem + ".best" + p.suffix)
