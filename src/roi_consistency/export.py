"""Share a model without pickle: a folder that loads with safetensors and JSON alone.

    roi-consistency export --checkpoint ck.best.pt --out model/ [--metrics eval/metrics.json]

- model.safetensors: the backbone's and mask network's weights (`backbone.*`, `mask_net.*`) and the
  fill image (`fill_image`), written with the safetensors package;
- config.json: classes, image size, normalisation, keep ratio, fill, thresholds, the training config,
  the package version, and the SHA-256 of model.safetensors;
- MODEL_CARD.md: what it was trained on, the method, the evaluation figures, its intended use and limits.

`rc.load(folder)` (and every command's --checkpoint) reads it back and predicts exactly what the
checkpoint predicts. config.json is written last: a folder whose export was cut short, or whose
weights were swapped, fails its checksum with a clear error.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from roi_consistency import __version__
from roi_consistency.atomic import atomic_write, write_text
from roi_consistency.checkpoint import checkpoint_config, load_checkpoint
from roi_consistency.config import FILLS, TrainConfig
from roi_consistency.errors import UserError
from roi_consistency.model import IMAGENET_MEAN, IMAGENET_STD
from roi_consistency.model_card import model_card

FORMAT = "roi-consistency-export/1"
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "MODEL_CARD.md"


def weights_of(ckpt: dict) -> dict[str, torch.Tensor]:
    """The tensors of an export, contiguous (safetensors stores plain row-major arrays)."""
    out = {f"backbone.{k}": v.contiguous() for k, v in ckpt["backbone"].items()}
    out.update({f"mask_net.{k}": v.contiguous() for k, v in ckpt["mask_net"].items()})
    if ckpt.get("fill_image") is not None:
        out["fill_image"] = ckpt["fill_image"].float().contiguous()
    return out


def export_config(ckpt: dict, cfg: TrainConfig, checkpoint: str, sha256: str) -> dict:
    return {"format": FORMAT, "package_version": __version__, "exported_from": str(checkpoint),
            "step": ckpt.get("step"), "classes": list(cfg.data.classes), "img_size": cfg.model.img_size,
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channels": 1},
            "keep_ratio": cfg.method.keep_ratio, "fill": FILLS[cfg.method.fill],
            "thresholds": ckpt.get("thresholds"), "trained_on": ckpt.get("environment"),
            "training_config": cfg.to_dict(), "sha256": {WEIGHTS: sha256}}


def export_model(checkpoint: str, out: str, metrics: str | None = None) -> Path:
    """Write the three files into `out` (each atomically, config.json last) and return the folder."""
    from safetensors.torch import save
    ckpt = load_checkpoint(checkpoint)
    cfg = checkpoint_config(ckpt, checkpoint)
    evaluation = read_metrics(metrics) if metrics else None
    data = save(weights_of(ckpt))
    folder = Path(out)
    atomic_write(folder / WEIGHTS, lambda tmp: tmp.write_bytes(data))
    config = export_config(ckpt, cfg, checkpoint, hashlib.sha256(data).hexdigest())
    write_text(folder / CARD, model_card(config, cfg, evaluation, metrics))
    write_text(folder / CONFIG, json.dumps(config, indent=1) + "\n")
    return folder


def read_metrics(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--metrics {path}: not found (write it with `roi-consistency evaluate`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--metrics {path}: not a metrics.json ({exc})") from None


def read_export(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, the tensors) of an exported folder, every file checked; a UserError names the first
    problem."""
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
    if hashlib.sha256(data).hexdigest() != config.get("sha256", {}).get(WEIGHTS):
        raise UserError(f"{folder / WEIGHTS} does not match {CONFIG} (its checksum differs): the folder mixes two "
                        "exports, or a file was changed or cut short; export again")
    return config, load(data)


def load_export(folder: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode, its TrainConfig) from an exported folder, as load_trained gives them."""
    from roi_consistency.model import build_model
    config, tensors = read_export(folder)
    cfg = TrainConfig.from_dict(config["training_config"])
    model = build_model(cfg.model, cfg.method, len(cfg.data.classes), load_pretrained=False)
    for part in ("backbone", "mask_net"):
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(part + ".")}
        try:
            getattr(model, part).load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"{folder}: {WEIGHTS} does not fit the model in {CONFIG} "
                            f"({str(exc).splitlines()[0][:160]})") from None
    model.set_fill(tensors.get("fill_image"))
    model.thresholds = config.get("thresholds")
    model.trained_on = config.get("trained_on")
    return model.to(device, memory_format=torch.channels_last).eval(), cfg
