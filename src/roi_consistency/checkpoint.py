"""Checkpoints: plain dicts of tensors, numbers, strings and lists, written atomically, loaded with
`torch.load(weights_only=True)` (no pickled classes, so loading never runs foreign code)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from roi_consistency.errors import UserError

FORMAT = "roi-consistency/1"


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} could not be loaded ({exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a roi-consistency checkpoint")
    return ckpt


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
