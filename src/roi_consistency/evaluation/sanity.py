"""The `sanity` command: the randomisation check with the mask head retrained, the version of the check
that is fair to a trained explainer (randomisation.py explains both cascades).

    roi-consistency sanity --checkpoint ck.pt --train-csv train.csv --val-csv val.csv --csv test.csv \
        --image-root images --out-dir eval

For each step k of the cascade, to the judged depth: the classifier's top k stages are randomised as the
frozen-head check randomises them; the mask stage is trained again from its first step, with the
checkpoint's own settings, initial head and data order, against that classifier (a `train --resume` of a
checkpoint whose mask stage has not begun, in a process of its own); and its maps of the test pairs are
compared with the original learned map's. A second mask stage on the intact classifier, with another seed,
gives the noise ceiling: how alike two trainings of the head are when nothing was randomised. The map
passes when the median rho at the judged depth is below PASS_BELOW and below half the ceiling.

Writes OUT/sanity.json, and its result into OUT/metrics.json's sanity.retrained_head when that exists;
`evaluate` reads OUT/sanity.json too, so running `sanity` first puts both cascades in the report.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.data.images import ImageCache
from roi_consistency.errors import UserError
from roi_consistency.evaluation.curves import sample_rows
from roi_consistency.evaluation.explainers import Learned
from roi_consistency.evaluation.randomisation import (
    JUDGED,
    PASS_BELOW,
    cascade_stages,
    draw,
    randomise,
    sanity_pairs,
    spearman,
    step_stats,
)
from roi_consistency.evaluation.schema import upgraded
from roi_consistency.files.atomic import write_json
from roi_consistency.files.checkpoint import best_path, read_checkpoint, save_checkpoint, stamp
from roi_consistency.model.config import TrainConfig
from roi_consistency.model.network import build_model
from roi_consistency.model.trained import load_trained, restore
from roi_consistency.runtime import pick_device


def fresh_mask_stage(ckpt: dict, backbone: torch.nn.Module, seed: int) -> dict:
    """The checkpoint with `backbone` as its classifier, its mask stage not yet begun, and the mask network
    at its initial weights under `seed` (the original's, for the original seed: build_model draws the
    backbone, then the head, under it); resuming it trains the mask stage from its first step."""
    config = copy.deepcopy(ckpt["config"])
    config["optim"]["seed"] = seed
    cfg = TrainConfig.from_dict(config)
    torch.manual_seed(seed)
    head = build_model(cfg.model, cfg.method, len(cfg.data.classes)).mask_net
    return {**ckpt, "config": config, "backbone": {k: v.contiguous() for k, v in backbone.state_dict().items()},
            "mask_net": head.state_dict(), "stage": "classifier",
            "progress": {"classifier": p} if (p := ckpt["progress"].get("classifier")) else {}, "optim": {},
            "history": [], "best": None, "thresholds": None}


def retrain(state: dict, work: Path, data: list[str], progress: bool) -> Path:
    """Train the mask stage of `state` in a process of its own (`roi-consistency train --resume`); returns
    the best checkpoint it writes."""
    work.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, work / "start.pt")
    cmd = [sys.executable, "-m", "roi_consistency", "train", "--resume", str(work / "start.pt"), "--save",
           str(work / "ck.pt"), *data]
    done = subprocess.run(cmd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise UserError(f"sanity: retraining the mask stage in {work} failed (exit {done.returncode}): "
                        f"{(done.stdout or '').strip().splitlines()[-1:] or 'see the output above'}")
    return best_path(work / "ck.pt")


def check_checkpoint(ckpt: dict, checkpoint: str) -> None:
    # a mask stage trained alone (--epochs 0) against the classifier in --weights has no classifier progress
    given = "classifier" in ckpt.get("progress", {}) or not ckpt["config"]["run"].get("epochs")
    if ckpt["config"]["method"].get("objective") != "two_stage" or not given:
        raise UserError(f"--checkpoint {checkpoint}: the retrained-head check needs a two-stage checkpoint whose "
                        "classifier stage finished or came from --weights (the reference, --preset seed, has no mask "
                        "stage of its own)")
    if not ckpt["config"]["run"].get("mask_epochs"):
        raise UserError(f"--checkpoint {checkpoint}: trained without a mask stage (--mask-epochs 0)")


def retrained_head_check(checkpoint: str, train_csv: str, val_csv: str, csv: str, image_root: str,
                         out_dir: str = "eval", cache: str | None = None, steps: int = JUDGED, images: int = 64,
                         seed: int = 0, workers: int = 2, device: str = "auto", progress: bool = True) -> dict:
    """Run the cascade with the head retrained at each step; write OUT/sanity.json (and into OUT/metrics.json
    when there is one); return sanity.retrained_head."""
    if Path(checkpoint).is_dir():
        raise UserError(f"--checkpoint {checkpoint} is an exported folder; the check retrains the mask stage, and "
                        "needs the checkpoint `train` wrote")
    written = stamp(checkpoint)  # before reading: the checkpoint this check is of
    ckpt = read_checkpoint(checkpoint)
    check_checkpoint(ckpt, checkpoint)
    dev = pick_device(device)
    model, cfg = restore(ckpt, checkpoint, dev)
    pairs = test_pairs(model, cfg, csv, image_root, cache, images, seed, dev)
    data = ["--train-csv", train_csv, "--val-csv", val_csv, "--image-root", image_root, "--workers", str(workers),
            "--device", device, *(["--cache", cache] if cache else [])]
    out, t0 = Path(out_dir), time.perf_counter()
    original = draw(Learned(model), pairs, 16)
    stages = cascade_stages(model.backbone)[:steps]  # names only: nothing is randomised here
    rho, constant = [], []
    for k in range(len(stages) + 1):  # k = 0: the ceiling, the intact classifier with another seed
        backbone = copy.deepcopy(model.backbone).cpu()
        for i, (_, module) in enumerate(cascade_stages(backbone)[:k]):
            randomise(module, seed + i)  # the frozen-head check's randomisation, step for step
        run_seed = cfg.optim.seed + 1 if k == 0 else cfg.optim.seed
        best = retrain(fresh_mask_stage(ckpt, backbone, run_seed), out / "sanity" / f"step{k}", data, progress)
        maps = draw(Learned(load_trained(best, dev)[0]), pairs, 16)
        rho.append(spearman(original, maps))
        constant.append(float((maps.flatten(1).std(1) == 0).float().mean()))
    result = verdict(rho, constant, [n for n, _ in stages], len(pairs), seed)
    result.update(cost_s=round(time.perf_counter() - t0, 1), mask_epochs=cfg.run.mask_epochs)
    publish(out, checkpoint, written, result)
    return result


def test_pairs(model, cfg, csv: str, image_root: str, cache: str | None, images: int, seed: int, dev):
    """The pairs evaluate's frozen-head check draws, for the same --seed (its images with a finding)."""
    size = cfg.model.img_size
    ds = ImageCSVDataset(csv, image_root, size, cfg.data.classes, cache=ImageCache(cache, size) if cache else None)
    if not ds.has_labels:
        raise UserError(f"{csv}: the check needs a labels column")
    rows = sample_rows(ds.labels, ds.names, {}, images, seed + 5)[0]
    pairs = sanity_pairs(ds, rows, {}, model, dev)
    if pairs is None:
        raise UserError(f"{csv}: no image with a finding to explain")
    return pairs


def verdict(rho: list[np.ndarray], constant: list[float], stages: list[str], n_pairs: int, seed: int) -> dict:
    """sanity.retrained_head: per step the statistics of rho with the original map, the ceiling, the verdict."""
    stats = step_stats(rho, np.random.default_rng(seed))
    ceiling = {k: v[0] for k, v in stats.items()}
    steps = {k: v[1:] for k, v in stats.items()}
    judged = min(JUDGED, len(stages))
    at = steps["median"][judged - 1] if judged else None
    return {"stages": stages, "judged_at": judged, "n_pairs": n_pairs, "pass_below": PASS_BELOW,
            "ceiling": ceiling, "learned": {**steps, "constant_share": constant[1:]},
            "pass": bool(at is not None and at < PASS_BELOW and at < ceiling["median"] / 2),
            "retrained": "the mask stage, from its first step, with the checkpoint's settings, initial head and "
                         "data order, against the classifier randomised top-down; the ceiling: a second mask "
                         "stage on the intact classifier with the next seed"}


def publish(out: Path, checkpoint: str, written: dict, result: dict) -> None:
    """OUT/sanity.json, and OUT/metrics.json's sanity.retrained_head when metrics.json is there."""
    write_json(out / "sanity.json", {"checkpoint": str(checkpoint), "checkpoint_stamp": written,
                                     "retrained_head": result})
    metrics = out / "metrics.json"
    if metrics.is_file():
        m = upgraded(json.loads(metrics.read_text()))
        m["sanity"] = {"frozen_head": (m.get("sanity") or {}).get("frozen_head"), "retrained_head": result}
        write_json(metrics, m)


def format_result(r: dict) -> str:
    j = r["judged_at"]
    lines = [f"retrained-head check ({r['n_pairs']} pairs, {r['mask_epochs']} mask epoch(s) per step, "
             f"{r['cost_s']:.0f} s): median rho of the learned map with its original",
             f"  ceiling (intact classifier, another seed): {r['ceiling']['median']:+.2f}"]
    lines += [f"  + {s:10s} {m:+.2f}" for s, m in zip(r["stages"], r["learned"]["median"])]
    lines.append(f"  verdict after {j} stage(s): {'pass' if r['pass'] else 'FAIL'} (below {r['pass_below']:g} and "
                 "below half the ceiling)")
    return "\n".join(lines)
