"""The pointing game per finding, on images with one boxed finding and on images with several (where
one map per image can point at only one of them), for the learned map of each box's class and for the
classifier's own gradient x (input - fill) of that class (what the method's mask head reads).

    python benchmarks/pointing_split.py CHECKPOINT DEMO_DIR   (DEMO_DIR as made by ./run_all.sh --demo)

The learned map's overall figure is the pointing game `roi-consistency evaluate` reports.
"""
import sys
from collections import defaultdict

import numpy as np
import torch
from classifier_auroc import demo_test_set
from PIL import Image

from roi_consistency.data.boxes import read_boxes, scale_box
from roi_consistency.evaluation.metrics import pointing_hit
from roi_consistency.model.mask_nets import class_attribution
from roi_consistency.model.trained import load_trained


def main(checkpoint: str, demo_dir: str) -> None:
    model, cfg = load_trained(checkpoint, torch.device("cpu"))
    size, ds, classes = cfg.model.img_size, demo_test_set(demo_dir, cfg), cfg.data.classes
    boxes = read_boxes(f"{demo_dir}/phantom/BBox_List_2017.csv")
    hits = {"learned": defaultdict(list), "attribution": defaultdict(list)}  # (finding, several?) -> hits
    for i, name in enumerate(ds.names):
        if not boxes.get(name):
            continue
        with Image.open(f"{demo_dir}/phantom/images/{name}") as im:
            src = im.size  # boxes are in the PNG's own pixels
        cls = torch.tensor([classes.index(b[0]) for b in boxes[name]])
        xn = model.normalize(ds[i][0][None].expand(len(cls), -1, -1, -1))
        with torch.no_grad():
            maps = {"learned": model.explain(xn, cls).maps[:, 0],
                    "attribution": class_attribution(model.backbone, xn, (), cls, model.fill_for(xn))[3][:, 0]}
        several = len(cls) > 1
        for j, (label, *box) in enumerate(boxes[name]):
            for key, m in maps.items():
                hits[key][(label, several)].append(pointing_hit(m[j].numpy(), scale_box(box, src, size)))
    for key, h in hits.items():
        every = [v for k, vs in h.items() for v in vs]
        one, more = ([v for (_, s), vs in h.items() if s == flag for v in vs] for flag in (False, True))
        print(f"{key}: pointing {np.mean(every):.3f} ({len(every)} boxes); on images with one finding "
              f"{np.mean(one):.3f} ({len(one)}), with several {np.mean(more):.3f} ({len(more)})")
        for label in sorted({k[0] for k in h}):
            one, more = h.get((label, False), []), h.get((label, True), [])
            print(f"  {label:13s} {np.mean(one + more):.2f}   one finding {np.mean(one) if one else np.nan:.2f}"
                  f" ({len(one)})   several {np.mean(more) if more else np.nan:.2f} ({len(more)})")


if __name__ == "__main__":
    main(*sys.argv[1:3])
