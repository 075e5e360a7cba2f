"""Where a finding's box ranks in the learned map: for each test box of FINDING, the share of the
image's pixels whose mask logit is above the box's best pixel (0 = the map's maximum is in the box,
i.e. a pointing-game hit), and where the map's maximum lies instead.

    python benchmarks/box_rank.py CHECKPOINT DEMO_DIR [FINDING]   (default finding: Nodule)
"""
import sys
from collections import Counter

import numpy as np
import torch
from classifier_auroc import demo_test_set
from PIL import Image

from roi_consistency.data.boxes import read_boxes, scale_box
from roi_consistency.evaluation.metrics import box_mask
from roi_consistency.model.trained import load_trained


def main(checkpoint: str, demo_dir: str, finding: str = "Nodule") -> None:
    model, cfg = load_trained(checkpoint, torch.device("cpu"))
    size, ds = cfg.model.img_size, demo_test_set(demo_dir, cfg)
    boxes = {n: [b[1:] for b in bs if b[0] == finding]
             for n, bs in read_boxes(f"{demo_dir}/phantom/BBox_List_2017.csv").items()}
    rows = [i for i, n in enumerate(ds.names) if boxes.get(n)]
    x = torch.stack([ds[i][0] for i in rows])
    with torch.no_grad():
        cls = torch.full((len(rows),), cfg.data.classes.index(finding))  # a class-specific map: the finding's
        maps = model.explain(model.normalize(x), cls).maps[:, 0].numpy()
    share, single, peaks = [], [], Counter()
    for m, i in zip(maps, rows):
        with Image.open(f"{demo_dir}/phantom/images/{ds.names[i]}") as im:
            src = im.size  # boxes are in the PNG's own pixels
        for box in boxes[ds.names[i]]:
            share.append(float((m > m[box_mask(m.shape, scale_box(box, src, size))].max()).mean()))
            single.append(ds.labels[i].sum() == 1)
        peaks[divmod(int(m.argmax()), size)] += 1
    share, single = np.array(share), np.array(single)
    print(f"{finding}: {len(share)} boxes ({single.sum()} on images with no other finding), map at {size} px")
    print(f"  best pixel of the box is the map's maximum: {np.mean(share == 0):.2f}; within the top 1%: "
          f"{np.mean(share < 0.01):.2f}; within the top 10%: {np.mean(share < 0.1):.2f}")
    print(f"  median share of pixels above the box: {np.median(share):.4f} "
          f"({np.median(share[single]):.4f} on single-finding images)")
    print(f"  map maxima (row, col): {len(peaks)} distinct of {sum(peaks.values())}; the most common: "
          + ", ".join(f"({r},{c}) x{n}" for (r, c), n in peaks.most_common(3)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
