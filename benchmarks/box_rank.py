"""Where a finding's box ranks in the learned map: for each test box of FINDING, the share of the
image's pixels whose mask logit is above the box's best pixel (0 = the map's maximum is in the box,
i.e. a pointing-game hit), and where the map's maximum lies instead.

    python benchmarks/box_rank.py CHECKPOINT DEMO_DIR [FINDING]   (default finding: Nodule)
"""
import csv
import sys

import numpy as np
import torch

from roi_consistency.cache import ImageCache
from roi_consistency.data import ImageCSVDataset
from roi_consistency.infer import load_trained


def main(checkpoint: str, demo_dir: str, finding: str = "Nodule") -> None:
    model, cfg = load_trained(checkpoint, torch.device("cpu"))
    size, spelled = cfg["img_size"], {"Infiltration": "Infiltrate"}.get(finding, finding)
    ds = ImageCSVDataset(f"{demo_dir}/csv/nih_roi_test.csv", f"{demo_dir}/phantom/images", size, cfg["classes"],
                         cache=ImageCache(f"{demo_dir}/cache256"))
    boxes = {}  # the phantom's PNGs are 256 px
    with open(f"{demo_dir}/phantom/BBox_List_2017.csv") as fh:
        for r in csv.reader(fh):
            if r and r[1] == spelled:
                boxes.setdefault(r[0], []).append([float(v) * size / 256 for v in r[2:6]])
    rows = [i for i, n in enumerate(ds.names) if n in boxes]
    x = torch.stack([ds[i][0] for i in rows])
    with torch.no_grad():
        maps = model.mask_maps(model.normalize(x))[0][:, 0].numpy()
    share, single, peaks = [], [], []
    for m, i in zip(maps, rows):
        for bx, by, bw, bh in boxes[ds.names[i]]:
            inside = m[int(by):int(np.ceil(by + bh)), int(bx):int(np.ceil(bx + bw))]
            share.append(float((m > inside.max()).mean()))
            single.append(ds.labels[i].sum() == 1)
        peaks.append(divmod(int(m.argmax()), size))
    share, single = np.array(share), np.array(single)
    print(f"{finding}: {len(share)} boxes ({single.sum()} on images with no other finding), map at {size} px")
    print(f"  best pixel of the box is the map's maximum: {np.mean(share == 0):.2f}; within the top 1%: "
          f"{np.mean(share < 0.01):.2f}; within the top 10%: {np.mean(share < 0.1):.2f}")
    print(f"  median share of pixels above the box: {np.median(share):.4f} "
          f"({np.median(share[single]):.4f} on single-finding images)")
    ys, xs = np.array(peaks).T
    print(f"  map maxima (row, col): {len(set(peaks))} distinct of {len(peaks)}; the most common: "
          + ", ".join(f"({r},{c}) x{n}" for (r, c), n in sorted(
              {p: peaks.count(p) for p in set(peaks)}.items(), key=lambda t: -t[1])[:3]))


if __name__ == "__main__":
    main(*sys.argv[1:4])
