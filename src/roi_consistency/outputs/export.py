"""The `export` command: share a trained model without pickle, as a folder of model.safetensors,
config.json and MODEL_CARD.md (the folder's format: model/exported.py).

    roi-consistency export --checkpoint ck.best.pt --out model/ [--metrics eval/metrics.json]

`rc.load(folder)` (and the --checkpoint of infer, evaluate and export) reads it back and predicts exactly what the
checkpoint predicts.
"""
from __future__ import annotations

import json
from pathlib import Path

from roi_consistency.errors import UserError
from roi_consistency.evaluation.schema import upgraded
from roi_consistency.model.exported import write_folder
from roi_consistency.model.trained import checkpoint_config, read_state
from roi_consistency.outputs.model_card import model_card


def export_model(checkpoint: str, out: str, metrics: str | None = None) -> Path:
    """Write the three files into `out` (each atomically, config.json last) and return the folder."""
    state = read_state(checkpoint)
    cfg = checkpoint_config(state, checkpoint)
    evaluation = read_metrics(metrics) if metrics else None
    return write_folder(out, state, cfg, checkpoint, lambda config: model_card(config, cfg, evaluation, metrics))


def read_metrics(path: str) -> dict:
    try:
        return upgraded(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise UserError(f"--metrics {path}: not found (write it with `roi-consistency evaluate`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--metrics {path}: not a metrics.json ({exc})") from None
