"""The confounder audit alone (no other evaluation pass) of a checkpoint on a shortcut phantom's marker-only
test films, with the learned map, Grad-CAM and the random map: what round 15 of EXPERIMENTS.md compares
mask heads by. `--mirror` audits each listed box mirrored left to right instead: a placebo region in the
other top corner, with no marker, which tells a map that lights the marker from one that lights that part
of every film. `--stage-maps` adds the inputs a head could read, each scored as a map: gradient x
(input - fill), the model-free anomaly map, and each stage's gradient-weighted features relu(dy_c/dA * A)
summed over channels (`stage1` to `stage4`, strides 4 to 32).

Usage: python benchmarks/marker_audit.py CHECKPOINT SHORTCUT_DIR OUT.json [--mirror] [--head gw] [--stage-maps]
SHORTCUT_DIR: as benchmarks/shortcut_round.sh makes it (phantom/, csv/, cache256/, marker_only.csv).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from gw_head import weighted_features  # benchmarks/gw_head.py, beside this script
from PIL import Image

from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.data.images import ImageCache
from roi_consistency.evaluation.confounders import audit, confounders_section, mirrored, read_confounders
from roi_consistency.evaluation.explainers import Anomaly, Attribution, GradCAM, Learned, Random
from roi_consistency.model.mask_nets import feature_layers
from roi_consistency.model.trained import load_trained


class StageMap:
    """relu(gradient x activation) of the pair's logit at one of the classifier's stages, summed over channels."""
    ties = False

    def __init__(self, model, i: int):
        self.backbone, self.layer, self.name = model.backbone, feature_layers(model.backbone)[i], f"stage{i + 1}"

    def __call__(self, pairs):
        (w,), _, _ = weighted_features(self.backbone, pairs.xn, pairs.cls, (self.layer,))
        return F.interpolate(w.sum(1, keepdim=True), size=pairs.xn.shape[-2:], mode="bilinear", align_corners=False)

def mirrored_file(listed: Path, images: Path, out: Path) -> Path:
    lines = listed.read_text().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:
        name, finding, *box = line.split(",")[:6]
        x, y, w, h = mirrored(tuple(float(v) for v in box), Image.open(images / name).size[0])
        rows.append(",".join([name, finding, str(x), str(y), str(w), str(h)]))
    out.write_text("\n".join(rows) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("shortcut_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--mirror", action="store_true")
    ap.add_argument("--head", choices=["method", "gw"], default="method")
    ap.add_argument("--stage-maps", action="store_true")
    a = ap.parse_args()
    if a.head == "gw":
        import gw_head
        gw_head.install()
    d = a.shortcut_dir
    model, cfg = load_trained(a.checkpoint, torch.device("cpu"))
    size = cfg.model.img_size
    ds = ImageCSVDataset(d / "csv/nih_roi_test.csv", d / "phantom/images", size, cfg.data.classes,
                         cache=ImageCache(str(d / "cache256"), size))
    with tempfile.TemporaryDirectory() as tmp:
        listed_file = mirrored_file(d / "marker_only.csv", d / "phantom/images", Path(tmp) / "m.csv") if a.mirror \
            else d / "marker_only.csv"
        listed, left = read_confounders(str(listed_file), ds, cfg.data.classes, size)
    maps = [Learned(model), GradCAM(model), Random(0)]
    if a.stage_maps:
        maps += [Attribution(model), Anomaly(model)] + [StageMap(model, i) for i in range(4)]
    found = audit(model, ds, listed, maps, cfg.method.keep_ratio, 16, 0, 0)
    section = confounders_section(found, str(listed_file), left, 0)
    a.out.write_text(json.dumps(section, indent=1))
    for name, s in section["sets"].items():
        print(name, s["n_pairs"], "; ".join(
            f"{k} share {m['share']['mean'] or 0:.2f} pointing {m['pointing']['mean'] or 0:.2f} "
            f"±15px {m['pointing_tolerant']['mean'] or 0:.2f}" for k, m in s["maps"].items()))


if __name__ == "__main__":
    main()
