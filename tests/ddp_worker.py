"""Run under torchrun by test_train.py: trains through the command line's own parsing (the arguments
after OUT_DIR), then writes this rank's parameter checksum so the test can compare ranks. Not
collected by pytest."""
import hashlib
import json
import os
import sys

import torch

from roi_consistency import cli
from roi_consistency.training.train import fit

out_dir, argv = sys.argv[1], sys.argv[2:]
rank = int(os.environ["RANK"])
with open(os.path.join(out_dir, f"pid{rank}"), "w") as fh:  # for a test that signals one rank
    fh.write(str(os.getpid()))
result = fit(*cli.train_config_from_args(cli.build_parser().parse_args(argv)))
h = hashlib.sha256()
for name, t in sorted(result["model"].named_parameters()):  # BN running stats are per rank
    h.update(name.encode())
    h.update(t.detach().contiguous().numpy().tobytes())
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
    json.dump({"sha": h.hexdigest(), "step": result["step"], "n_val": result["metrics"].get("n_val"),
               "world": torch.distributed.get_world_size(), "signal": result["signal"]}, fh)
