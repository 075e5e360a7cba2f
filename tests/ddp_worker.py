"""Run under torchrun by test_train.py: trains a few steps with DDP on CPU (gloo), then writes
this rank's parameter checksum so the test can compare ranks. Not collected by pytest."""
import hashlib
import json
import os
import sys

import torch

from roi_consistency.config import TrainConfig
from roi_consistency.train import fit

out_dir, train_csv, val_csv, images = sys.argv[1:5]
# two_stage: a classifier epoch, then a mask epoch, so DDP is rebuilt for the mask stage's parameters
# (the default features_grad per-class head: ranks train different numbers of (image, finding) pairs)
cfg = TrainConfig(train_csv=train_csv, val_csv=val_csv, image_root=images, img_size=48, backbone="resnet18",
                  pretrained=False, batch_size=8, accum_steps=2, epochs=2, max_steps=None, lr=1e-3,
                  workers=0, save=os.path.join(out_dir, "ddp.pt"), log_every=1, objective="two_stage",
                  mask_start_epoch=1, mask_net="features_grad", mask_head="per_class", min_keep_ratio=0.05,
                  evalx_weight=0.25, alpha=1.0, beta=2.0, gamma=0.0, delta=1e-3)
result = fit(cfg)
h = hashlib.sha256()
for name, t in sorted(result["model"].named_parameters()):  # BN running stats are per rank
    h.update(name.encode())
    h.update(t.detach().contiguous().numpy().tobytes())
rank = int(os.environ["RANK"])
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
    json.dump({"sha": h.hexdigest(), "step": result["step"], "n_val": result["metrics"]["n_val"],
               "world": torch.distributed.get_world_size()}, fh)
