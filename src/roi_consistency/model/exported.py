"""The exported folder: a trained model shared without pickle, loaded with safetensors and JSON alone.

- model.safetensors: the backbone's and mask network's weights (`backbone.*`, `mask_net.*`) and the
  fill image (`fill_image`), written with the safetensors package;
- config.json: classes, image size, normalisation, keep ratio, fill, thresholds, the training config,
  the package version, and the SHA-256 of model.safetensors;
- MODEL_CARD.md: what it was trained on, the method, the evaluation figures, its intended use and limits.

config.json is written last: a folder whose export was cut short, or whose weights were swapped, fails
its checksum with a clear error. `roi-consistency export` writes one (outputs/export.py); trained.py
reads one back as it reads a checkpoint.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from roi_consistency.errors import UserError
from roi_consistency.files.atomic import atomic_write, write_text
from roi_consistency.model.config import FILLS, TrainConfig
from roi_consistency.model.network import IMAGENET_MEAN, IMAGENET_STD
from roi_consistency.version import __version__

FORMAT = "roi-consistency-export/1"
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "MODEL_CARD.md"


def tensors_of(state: dict) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's state, contiguous (safetensors stores plain row-major arrays)."""
    out = {f"backbone.{k}": v.contiguous() for k, v in state["backbone"].items()}
    out.update({f"mask_net.{k}": v.contiguous() for k, v in state["mask_net"].items()})
    if state.get("fill_image") is not None:
        out["fill_image"] = state["fill_image"].float().contiguous()
    return out


def export_config(state: dict, cfg: TrainConfig, source: str, sha256: str) -> dict:
    """config.json of a checkpoint's state read from `source`."""
    return {"format": FORMAT, "package_version": __version__, "exported_from": str(source),
            "step": state.get("step"), "classes": list(cfg.data.classes), "img_size": cfg.model.img_size,
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channels": 1},
            "keep_ratio": cfg.method.keep_ratio, "fill": FILLS[cfg.method.fill],
            "thresholds": state.get("thresholds"), "trained_on": state.get("environment"),
            "training_config": cfg.to_dict(), "sha256": {WEIGHTS: sha256}}


def write_folder(folder: str | Path, state: dict, cfg: TrainConfig, source: str, card) -> Path:
    """The three files of a checkpoint's state, each atomically, config.json last; card(config) -> the
    model card's text."""
    from safetensors.torch import save
    data = save(tensors_of(state))
    folder = Path(folder)
    atomic_write(folder / WEIGHTS, lambda tmp: tmp.write_bytes(data))
    config = export_config(state, cfg, source, hashlib.sha256(data).hexdigest())
    write_text(folder / CARD, card(config))
    write_text(folder / CONFIG, json.dumps(config, indent=1) + "\n")
    return folder


def read_folder(folder: str | Path) -> dict:
    """An exported folder as a checkpoint's state (config, backbone, mask_net, fill_image, thresholds,
    environment, step), every file checked; a UserError names the first problem."""
    from safetensors.torch import load
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: {name} is missing; export the model again with `roi-consistency export`")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{folder / CONFIG}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{folder / CONFIG}: not a roi-consistency export (format {FORMAT})")
    data = (folder / WEIGHTS).read_bytes()
    if hashlib.sha256(data).hexdigest() != (config.get("sha256") or {}).get(WEIGHTS):
        raise UserError(f"{folder / WEIGHTS} does not match {CONFIG} (its checksum differs): the folder mixes two "
                        "exports, or a file was changed or cut short; export again")
    tensors = load(data)
    part = {p: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(p + ".")}
            for p in ("backbone", "mask_net")}
    return {"config": config.get("training_config"), **part, "fill_image": tensors.get("fill_image"),
            "thresholds": config.get("thresholds"), "environment": config.get("trained_on"), "step": config.get("step")}
